//! CreateKey, DescribeKey, ListKeys, GetPublicKey, ScheduleKeyDeletion and
//! CancelKeyDeletion over custody records.

use nekms_keys::context::Usage;
use nekms_keys::{KeyRecord, KeySpec, Origin};
use nekms_kms_proto::error::KmsError;
use nekms_kms_proto::request::{b64, Request as Fields};
use nekms_rpc::{Entropy, GenerateKey};
use nekms_store::meta::KeyMeta;
use nekms_store::KeyStore;
use serde_json::{json, Value};

use super::{enclave_error, store_error, uuid_of, Answer, Ctx};

/// KMS's name of a key spec.
pub(crate) fn kms_spec(spec: KeySpec) -> &'static str {
    match spec {
        KeySpec::Secp256k1 => "ECC_SECG_P256K1",
        KeySpec::P256 => "ECC_NIST_P256",
        KeySpec::P384 => "ECC_NIST_P384",
        KeySpec::Ed25519 => "ECC_NIST_EDWARDS25519",
        KeySpec::Rsa2048 => "RSA_2048",
        KeySpec::Rsa3072 => "RSA_3072",
        KeySpec::Rsa4096 => "RSA_4096",
    }
}

fn spec_of_kms(name: &str) -> Option<KeySpec> {
    [KeySpec::Secp256k1, KeySpec::P256, KeySpec::P384, KeySpec::Ed25519, KeySpec::Rsa2048, KeySpec::Rsa3072, KeySpec::Rsa4096]
        .into_iter()
        .find(|s| kms_spec(*s) == name)
}

/// The signing algorithms KMS lists for a key of `spec` (those nekms serves).
pub(crate) fn signing_algorithms(spec: KeySpec) -> Vec<&'static str> {
    match spec {
        KeySpec::Secp256k1 | KeySpec::P256 => vec!["ECDSA_SHA_256"],
        KeySpec::P384 => vec!["ECDSA_SHA_384"],
        KeySpec::Ed25519 => vec!["ED25519_SHA_512"],
        _ => vec![
            "RSASSA_PSS_SHA_256",
            "RSASSA_PSS_SHA_384",
            "RSASSA_PSS_SHA_512",
            "RSASSA_PKCS1_V1_5_SHA_256",
            "RSASSA_PKCS1_V1_5_SHA_384",
            "RSASSA_PKCS1_V1_5_SHA_512",
        ],
    }
}

/// KMS's algorithms for RSA keys made to decrypt.
const ENCRYPTION_ALGORITHMS: [&str; 2] = ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"];

/// KeyUsage and its algorithms: an RSA record made to decrypt is, to KMS's
/// clients, an ENCRYPT_DECRYPT key; every other record signs and verifies.
fn add_usage(m: &mut Value, r: &KeyRecord) {
    if r.may_decrypt() {
        m["KeyUsage"] = json!("ENCRYPT_DECRYPT");
        m["EncryptionAlgorithms"] = json!(ENCRYPTION_ALGORITHMS);
    } else {
        m["KeyUsage"] = json!("SIGN_VERIFY");
        m["SigningAlgorithms"] = json!(signing_algorithms(r.spec));
    }
}

/// KeyMetadata, as DescribeKey and CreateKey return it.
fn metadata(ctx: &Ctx<'_>, r: &KeyRecord, deletion: Option<u64>, meta: &KeyMeta) -> Value {
    let state = match (deletion, meta.disabled) {
        (Some(_), _) => "PendingDeletion",
        (None, true) => "Disabled",
        (None, false) => "Enabled",
    };
    let mut m = json!({
        "AWSAccountId": ctx.api.account,
        "KeyId": r.key_id,
        "Arn": ctx.arn(&r.key_id),
        "CreationDate": r.created_at,
        "Enabled": state == "Enabled",
        "Description": meta.description,
        "KeyState": state,
        "Origin": if r.origin == Origin::Imported { "EXTERNAL" } else { "AWS_KMS" },
        "KeyManager": "CUSTOMER",
        "CustomerMasterKeySpec": kms_spec(r.spec),
        "KeySpec": kms_spec(r.spec),
        "MultiRegion": false,
    });
    add_usage(&mut m, r);
    if let Some(at) = deletion {
        m["DeletionDate"] = json!(at);
    }
    m
}

/// The record `name` and its deletion date.
pub(super) async fn entry(ctx: &Ctx<'_>, name: &str) -> Result<(KeyRecord, Option<u64>), KmsError> {
    ctx.state
        .store
        .entry(name)
        .await
        .map_err(store_error)?
        .ok_or_else(|| KmsError::not_found(format!("Key '{}' does not exist", ctx.arn(name))))
}

pub(super) async fn create_key(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    ctx.manages("CreateKey")?;
    let unsupported = |m: &str| Err(KmsError::unsupported(m.to_owned()));
    let spec_name = match (f.opt_str("KeySpec")?, f.opt_str("CustomerMasterKeySpec")?) {
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => "SYMMETRIC_DEFAULT",
    };
    let Some(spec) = spec_of_kms(spec_name) else {
        return Err(KmsError::unsupported(format!(
            "KeySpec {spec_name}: an enclave key is one of ECC_SECG_P256K1, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_EDWARDS25519, RSA_2048, RSA_3072, RSA_4096"
        )));
    };
    // KMS's default usage is ENCRYPT_DECRYPT, for its symmetric default spec; an
    // enclave key names its spec, so signing is the default here.
    let decrypt_only = match f.opt_str("KeyUsage")?.unwrap_or("SIGN_VERIFY") {
        "SIGN_VERIFY" => false,
        "ENCRYPT_DECRYPT" if spec.is_rsa() => true,
        "ENCRYPT_DECRYPT" => {
            return Err(KmsError::validation(format!(
                "KeyUsage ENCRYPT_DECRYPT is not valid for KeySpec {spec_name}: only RSA keys decrypt"
            )))
        }
        other => return Err(KmsError::validation(format!("KeyUsage {other} is not SIGN_VERIFY or ENCRYPT_DECRYPT"))),
    };
    if f.opt_str("Origin")?.is_some_and(|o| o != "AWS_KMS") {
        return unsupported("Origin: keys are made in the enclave (AWS_KMS); importing is the administrator's `nekms key import`");
    }
    if f.has("Policy") {
        return unsupported("Policy: who may use an enclave key is the agent's access file; leave Policy out");
    }
    let mut meta = KeyMeta { description: f.str_len("Description", 0, 8192)?.unwrap_or("").to_owned(), ..KeyMeta::default() };
    super::meta::add_tags(&mut meta, f)?;
    if f.opt_bool("MultiRegion")? == Some(true) {
        return unsupported("MultiRegion: an enclave key lives in its store, in no region");
    }
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| KmsError::internal("the random generator failed"))?;
    let name = format!("{}{}", ctx.caller.key_prefix, uuid_of(id));
    ctx.may(&name, "CreateKey")?;
    let request = GenerateKey {
        key_id: name,
        spec,
        kms_key_id: None,
        entropy: Entropy::Nsm,
        encryption_context: Default::default(),
        nonce: None,
        decrypt: false,
        privval: false,
        decrypt_only,
    };
    let record = ctx
        .state
        .enclave
        .call(|c| {
            let r = request.clone();
            async move { c.generate_key(r).await }
        })
        .await
        .map_err(enclave_error)?;
    ctx.state.store.create(&record).await.map_err(store_error)?;
    meta.record = record.created_at;
    if meta != (KeyMeta { record: record.created_at, ..KeyMeta::default() }) {
        super::meta::put(ctx, &record.key_id, &meta).await?;
    }
    Ok(json!({"KeyMetadata": metadata(ctx, &record, None, &meta)}))
}

pub(super) async fn describe_key(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    let name = ctx.resolve(f.key_id("KeyId")?, "DescribeKey").await?;
    let (r, deletion) = entry(ctx, &name).await?;
    let meta = ctx.state.store.meta(&name, r.created_at).await.map_err(store_error)?;
    Ok(json!({"KeyMetadata": metadata(ctx, &r, deletion, &meta)}))
}

pub(super) async fn get_public_key(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    let name = ctx.resolve(f.key_id("KeyId")?, "GetPublicKey").await?;
    let (r, deletion) = entry(ctx, &name).await?;
    if deletion.is_some() {
        return Err(KmsError::invalid_state(format!("{} is pending deletion.", ctx.arn(&name))));
    }
    super::meta::usable(ctx, &r).await?;
    super::opened(ctx, &r).await?;
    let mut answer = json!({
        "KeyId": ctx.arn(&name),
        "PublicKey": b64(&r.public_key),
        "CustomerMasterKeySpec": kms_spec(r.spec),
        "KeySpec": kms_spec(r.spec),
    });
    add_usage(&mut answer, &r);
    Ok(answer)
}

pub(super) async fn list_keys(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    let limit = f.opt_int("Limit", 1, 1000)?.unwrap_or(100) as usize;
    let mut after = f.opt_str("Marker")?.map(str::to_owned);
    let mut keys = Vec::new();
    // At most this many store pages a request: a caller with few keys in a big store gets them over several.
    for _ in 0..10 {
        let page = ctx.state.store.list(after.as_deref(), 1000).await.map_err(store_error)?;
        for r in &page.records {
            if !ctx.caller.may_use(&r.key_id) {
                continue;
            }
            if keys.len() == limit {
                let marker = keys.last().and_then(|k: &Value| k["KeyId"].as_str()).unwrap_or_default().to_owned();
                return Ok(json!({"Keys": keys, "Truncated": true, "NextMarker": marker}));
            }
            keys.push(json!({"KeyId": r.key_id, "KeyArn": ctx.arn(&r.key_id)}));
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(json!({"Keys": keys, "Truncated": false})),
        }
    }
    Ok(json!({"Keys": keys, "Truncated": true, "NextMarker": after.unwrap_or_default()}))
}

pub(super) async fn schedule_key_deletion(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    ctx.deletes("ScheduleKeyDeletion")?;
    let name = ctx.resolve(f.key_id("KeyId")?, "ScheduleKeyDeletion").await?;
    let days = f.opt_int("PendingWindowInDays", 7, 30)?.unwrap_or(30) as u64;
    let (record, deletion) = entry(ctx, &name).await?;
    if Usage::of_context(&record.encryption_context, record.spec) == Ok(Usage::Privval) {
        return Err(KmsError::new(
            "AccessDeniedException",
            format!("{} is a validator's consensus key: its administrator deletes it (nekms key delete)", ctx.arn(&name)),
        ));
    }
    if deletion.is_some() {
        return Err(KmsError::invalid_state(format!("{} is pending deletion.", ctx.arn(&name))));
    }
    let at = nekms_store::now() + days * 86_400;
    if !ctx.state.store.set_deletion(&name, Some(at)).await.map_err(store_error)? {
        return Err(KmsError::not_found(format!("Key '{}' does not exist", ctx.arn(&name))));
    }
    // Stop signing now, not when the cached record expires.
    ctx.state.records.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
    Ok(json!({"KeyId": ctx.arn(&name), "DeletionDate": at, "KeyState": "PendingDeletion", "PendingWindowInDays": days}))
}

pub(super) async fn cancel_key_deletion(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    ctx.deletes("CancelKeyDeletion")?;
    let name = ctx.resolve(f.key_id("KeyId")?, "CancelKeyDeletion").await?;
    let (record, deletion) = entry(ctx, &name).await?;
    if deletion.is_none() {
        return Err(KmsError::invalid_state(format!("{} is not pending deletion.", ctx.arn(&name))));
    }
    // As KMS: the key comes back disabled; EnableKey makes it sign again.
    let mut meta = ctx.state.store.meta(&name, record.created_at).await.map_err(store_error)?;
    meta.disabled = true;
    super::meta::put(ctx, &name, &meta).await?;
    ctx.state.store.set_deletion(&name, None).await.map_err(store_error)?;
    Ok(json!({"KeyId": ctx.arn(&name)}))
}

//! Symmetric cryptography: Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
//! GenerateDataKeyWithoutPlaintext, GenerateDataKeyPair,
//! GenerateDataKeyPairWithoutPlaintext, GenerateRandom; and the ciphertext
//! blobs they seal and open.

use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::blob::{self, EncryptionContext};
use crate::crypto;
use crate::error::KmsError;
use crate::model::KeySpec;
use crate::policy::RequestContext;
use crate::request::b64;
use crate::store::StoredKey;

use super::{Call, MAX_PLAINTEXT};

impl Call<'_> {
    fn check_encryption_algorithm(&self, member: &str) -> Result<(), KmsError> {
        match self.req.opt_str(member)? {
            None | Some("SYMMETRIC_DEFAULT") => Ok(()),
            Some(a @ ("RSAES_OAEP_SHA_1" | "RSAES_OAEP_SHA_256" | "SM2PKE")) => {
                Err(KmsError::key_usage(format!("The encryption algorithm {a} is not valid for a symmetric key")))
            }
            Some(a) => Err(KmsError::constraint(
                member,
                format!(
                    "Member must satisfy enum value set: [SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256, SM2PKE] (got {a:?})"
                ),
            )),
        }
    }

    fn seal_blob(&self, key: &StoredKey, context: &EncryptionContext, plaintext: &[u8]) -> Result<Vec<u8>, KmsError> {
        let (version, material) = self.store().current_material(&key.metadata.key_id)?;
        let material: &[u8; 32] = material.as_slice().try_into().map_err(|_| KmsError::internal("symmetric material is not 32 bytes"))?;
        Ok(blob::seal(&key.metadata.arn, version, material, context, plaintext))
    }

    /// Open a blob with its key; `expected` is the KeyId the caller named, if any.
    fn open_blob(
        &mut self,
        blob_bytes: &[u8],
        context: &EncryptionContext,
        key_member: &str,
        action: &str,
        extra: &dyn Fn(&mut RequestContext),
    ) -> Result<(StoredKey, Zeroizing<Vec<u8>>), KmsError> {
        let header = blob::peek(blob_bytes)?;
        let key = self.key(&header.key_arn).map_err(|e| match e.kind {
            "NotFoundException" => KmsError::invalid_ciphertext("The ciphertext refers to a key that does not exist in this KMS"),
            _ => e,
        })?;
        if let Some(named) = self.req.str_len(key_member, 1, 2048)? {
            let named = self.key(named)?;
            if named.metadata.key_id != key.metadata.key_id {
                return Err(KmsError::new(
                    "IncorrectKeyException",
                    "The key ID in the request does not identify a CMK that can perform this operation.",
                ));
            }
        }
        self.authorize(&key, action, extra)?;
        self.symmetric(&key, "Decrypt")?;
        let material = self.store().material(&key.metadata.key_id, header.material_version).map_err(|e| match e {
            crate::store::StoreError::NoMaterial(_) => {
                KmsError::invalid_ciphertext("The ciphertext names key material this key does not have")
            }
            e => e.into(),
        })?;
        let material: &[u8; 32] = material.as_slice().try_into().map_err(|_| KmsError::internal("symmetric material is not 32 bytes"))?;
        let plaintext = blob::open(blob_bytes, &header, material, context)?;
        Ok((key, plaintext))
    }

    fn context_keys(context: &EncryptionContext) -> impl Fn(&mut RequestContext) + '_ {
        move |ctx: &mut RequestContext| {
            for (k, v) in context {
                ctx.set(&format!("kms:EncryptionContext:{k}"), v.clone());
            }
            if !context.is_empty() {
                ctx.set_many("kms:EncryptionContextKeys", context.keys().cloned().collect());
            }
        }
    }

    pub(super) fn encrypt(&mut self) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let plaintext = self.req.blob("Plaintext", 1, MAX_PLAINTEXT)?;
        let context = self.req.context("EncryptionContext")?;
        self.check_encryption_algorithm("EncryptionAlgorithm")?;
        let keys = Self::context_keys(&context);
        let key = self.authorized_key("KeyId", "kms:Encrypt", &|ctx| {
            keys(ctx);
            ctx.set("kms:EncryptionAlgorithm", "SYMMETRIC_DEFAULT");
        })?;
        self.symmetric(&key, "Encrypt")?;
        self.dry_run()?;
        let blob = self.seal_blob(&key, &context, &plaintext)?;
        Ok(json!({"CiphertextBlob": b64(&blob), "KeyId": key.metadata.arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}))
    }

    pub(super) fn decrypt(&mut self) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let blob_bytes = self.req.blob("CiphertextBlob", 1, blob::MAX_BLOB)?;
        let context = self.req.context("EncryptionContext")?;
        self.check_encryption_algorithm("EncryptionAlgorithm")?;
        let recipient = self.recipient()?;
        let keys = Self::context_keys(&context);
        let r = recipient.clone();
        let (key, plaintext) = self.open_blob(&blob_bytes, &context, "KeyId", "kms:Decrypt", &|ctx| {
            keys(ctx);
            ctx.set("kms:EncryptionAlgorithm", "SYMMETRIC_DEFAULT");
            if let Some(r) = &r {
                r.add_condition_keys(ctx);
            }
        })?;
        self.dry_run()?;
        let mut out = json!({"KeyId": key.metadata.arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"});
        match recipient {
            Some(r) => out["CiphertextForRecipient"] = b64(&r.seal(&plaintext)?).into(),
            None => out["Plaintext"] = b64(&plaintext).into(),
        }
        Ok(out)
    }

    pub(super) fn re_encrypt(&mut self) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let blob_bytes = self.req.blob("CiphertextBlob", 1, blob::MAX_BLOB)?;
        let source_context = self.req.context("SourceEncryptionContext")?;
        let dest_context = self.req.context("DestinationEncryptionContext")?;
        self.check_encryption_algorithm("SourceEncryptionAlgorithm")?;
        self.check_encryption_algorithm("DestinationEncryptionAlgorithm")?;
        let source_keys = Self::context_keys(&source_context);
        let (source, plaintext) =
            self.open_blob(&blob_bytes, &source_context, "SourceKeyId", "kms:ReEncryptFrom", &|ctx| source_keys(ctx))?;
        let dest_keys = Self::context_keys(&dest_context);
        let dest = self.authorized_key("DestinationKeyId", "kms:ReEncryptTo", &|ctx| dest_keys(ctx))?;
        self.symmetric(&dest, "ReEncrypt")?;
        self.dry_run()?;
        let blob = self.seal_blob(&dest, &dest_context, &plaintext)?;
        Ok(json!({
            "CiphertextBlob": b64(&blob),
            "SourceKeyId": source.metadata.arn,
            "KeyId": dest.metadata.arn,
            "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }))
    }

    pub(super) fn generate_data_key(&mut self, with_plaintext: bool) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let length = match (self.req.opt_str("KeySpec")?, self.req.opt_int("NumberOfBytes", 1, 1024)?) {
            (Some(_), Some(_)) => return Err(KmsError::validation("Please specify either number of bytes or key spec.")),
            (Some("AES_256"), None) => 32,
            (Some("AES_128"), None) => 16,
            (Some(s), None) => {
                return Err(KmsError::constraint("KeySpec", format!("Member must satisfy enum value set: [AES_256, AES_128] (got {s:?})")))
            }
            (None, Some(n)) => n as usize,
            (None, None) => return Err(KmsError::validation("Please specify either number of bytes or key spec.")),
        };
        let context = self.req.context("EncryptionContext")?;
        let recipient = self.recipient_unless(!with_plaintext, "GenerateDataKeyWithoutPlaintext")?;
        let action = if with_plaintext { "kms:GenerateDataKey" } else { "kms:GenerateDataKeyWithoutPlaintext" };
        let keys = Self::context_keys(&context);
        let r = recipient.clone();
        let key = self.authorized_key("KeyId", action, &|ctx| {
            keys(ctx);
            if let Some(r) = &r {
                r.add_condition_keys(ctx);
            }
        })?;
        self.symmetric(&key, "GenerateDataKey")?;
        self.dry_run()?;
        let data_key = crypto::random(length);
        let blob = self.seal_blob(&key, &context, &data_key)?;
        let mut out = json!({"CiphertextBlob": b64(&blob), "KeyId": key.metadata.arn});
        if with_plaintext {
            match recipient {
                Some(r) => out["CiphertextForRecipient"] = b64(&r.seal(&data_key)?).into(),
                None => out["Plaintext"] = b64(&data_key).into(),
            }
        }
        Ok(out)
    }

    pub(super) fn generate_data_key_pair(&mut self, with_plaintext: bool) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let spec_name = self.req.str("KeyPairSpec")?.to_owned();
        let spec = KeySpec::parse(&spec_name).filter(|s| *s != KeySpec::SymmetricDefault).ok_or_else(|| {
            KmsError::constraint("KeyPairSpec", format!("Member must satisfy enum value set: [RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, ECC_SECG_P256K1] (got {spec_name:?})"))
        })?;
        let context = self.req.context("EncryptionContext")?;
        let recipient = self.recipient_unless(!with_plaintext, "GenerateDataKeyPairWithoutPlaintext")?;
        let action = if with_plaintext { "kms:GenerateDataKeyPair" } else { "kms:GenerateDataKeyPairWithoutPlaintext" };
        let keys = Self::context_keys(&context);
        let r = recipient.clone();
        let key = self.authorized_key("KeyId", action, &|ctx| {
            keys(ctx);
            ctx.set("kms:DataKeyPairSpec", spec.name());
            if let Some(r) = &r {
                r.add_condition_keys(ctx);
            }
        })?;
        self.symmetric(&key, "GenerateDataKeyPair")?;
        self.dry_run()?;
        let pair = crypto::generate(spec)?;
        let blob = self.seal_blob(&key, &context, &pair.private_pkcs8)?;
        let mut out = json!({
            "PrivateKeyCiphertextBlob": b64(&blob),
            "PublicKey": b64(&pair.public_spki),
            "KeyId": key.metadata.arn,
            "KeyPairSpec": spec.name(),
        });
        if with_plaintext {
            match recipient {
                Some(r) => out["CiphertextForRecipient"] = b64(&r.seal(&pair.private_pkcs8)?).into(),
                None => out["PrivateKeyPlaintext"] = b64(&pair.private_pkcs8).into(),
            }
        }
        Ok(out)
    }

    pub(super) fn generate_random(&mut self) -> Result<Value, KmsError> {
        let n =
            self.req.opt_int("NumberOfBytes", 1, 1024)?.ok_or_else(|| KmsError::constraint("NumberOfBytes", "Member must not be null"))?
                as usize;
        if self.req.has("CustomKeyStoreId") {
            return Err(KmsError::unsupported("custom key stores are not supported by this KMS"));
        }
        let recipient = self.recipient()?;
        let r = recipient.clone();
        self.authorize_identity("kms:GenerateRandom", &|ctx| {
            if let Some(r) = &r {
                r.add_condition_keys(ctx);
            }
        })?;
        let bytes = crypto::random(n);
        Ok(match recipient {
            Some(r) => json!({"CiphertextForRecipient": b64(&r.seal(&bytes)?)}),
            None => json!({"Plaintext": b64(&bytes)}),
        })
    }
}

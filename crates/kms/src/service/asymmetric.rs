//! Asymmetric keys: Sign, Verify, GetPublicKey, DeriveSharedSecret.

use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::crypto::{self, SigningAlgorithm};
use crate::error::KmsError;
use crate::model::{KeySpec, KeyUsage};
use crate::request::b64;
use crate::store::StoredKey;

use super::{usage_name, Call, MAX_PLAINTEXT};

type SigningRequest = (StoredKey, SigningAlgorithm, Zeroizing<Vec<u8>>, bool);

impl Call<'_> {
    /// Read and authorize a Sign/Verify request: key, algorithm, message, whether it is a digest.
    fn signing(&mut self, action: &str, op: &str) -> Result<SigningRequest, KmsError> {
        self.grant_tokens()?;
        let message = self.req.blob("Message", 1, MAX_PLAINTEXT)?;
        let is_digest = match self.req.opt_str("MessageType")? {
            None | Some("RAW") => false,
            Some("DIGEST") => true,
            Some("EXTERNAL_MU") => {
                return Err(KmsError::unsupported("MessageType EXTERNAL_MU is for ML-DSA keys, which this KMS does not implement"))
            }
            Some(t) => {
                return Err(KmsError::constraint(
                    "MessageType",
                    format!("Member must satisfy enum value set: [RAW, DIGEST, EXTERNAL_MU] (got {t:?})"),
                ))
            }
        };
        let alg_name = self.req.str("SigningAlgorithm")?.to_owned();
        let message_type = if is_digest { "DIGEST" } else { "RAW" };
        let name_for_ctx = alg_name.clone();
        let key = self.authorized_key("KeyId", action, &|ctx| {
            ctx.set("kms:SigningAlgorithm", name_for_ctx.clone());
            ctx.set("kms:MessageType", message_type);
        })?;
        self.usable(&key)?;
        self.expect_usage(&key, KeyUsage::SignVerify, op)?;
        let alg = SigningAlgorithm::for_key(&alg_name, key.metadata.key_spec).ok_or_else(|| {
            KmsError::key_usage(format!("Algorithm {alg_name} is incompatible with key spec {}.", key.metadata.key_spec.name()))
        })?;
        Ok((key, alg, message, is_digest))
    }

    pub(super) fn sign(&mut self) -> Result<Value, KmsError> {
        let (key, alg, message, is_digest) = self.signing("kms:Sign", "Sign")?;
        self.dry_run()?;
        let material = self.store().material(&key.metadata.key_id, 1)?;
        let sig = alg.sign(key.metadata.key_spec, &material, &message, is_digest)?;
        Ok(json!({"KeyId": key.metadata.arn, "Signature": b64(&sig), "SigningAlgorithm": alg.name}))
    }

    pub(super) fn verify(&mut self) -> Result<Value, KmsError> {
        let signature = self.req.blob("Signature", 1, 6144)?;
        let (key, alg, message, is_digest) = self.signing("kms:Verify", "Verify")?;
        self.dry_run()?;
        let material = self.store().material(&key.metadata.key_id, 1)?;
        let spki = crypto::public_key(key.metadata.key_spec, &material)?;
        if !alg.verify(key.metadata.key_spec, &spki, &message, is_digest, &signature)? {
            return Err(KmsError::new("KMSInvalidSignatureException", "The signature is not valid for this message and key."));
        }
        Ok(json!({"KeyId": key.metadata.arn, "SignatureValid": true, "SigningAlgorithm": alg.name}))
    }

    pub(super) fn get_public_key(&mut self) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        let key = self.authorized_key("KeyId", "kms:GetPublicKey", &|_| {})?;
        self.usable(&key)?;
        let m = &key.metadata;
        let material = match (m.key_spec, m.key_usage) {
            (KeySpec::SymmetricDefault, _) => {
                return Err(KmsError::unsupported(format!("{} is a symmetric key; it has no public key", m.arn)))
            }
            _ => self.store().material(&m.key_id, 1)?,
        };
        let spki = match m.key_usage {
            KeyUsage::KeyAgreement => crypto::agreement_public_key(m.key_spec, &material)?,
            _ => crypto::public_key(m.key_spec, &material)?,
        };
        let mut out = json!({
            "KeyId": m.arn,
            "PublicKey": b64(&spki),
            "CustomerMasterKeySpec": m.key_spec.name(),
            "KeySpec": m.key_spec.name(),
            "KeyUsage": usage_name(m.key_usage),
        });
        if let Some(a) = &m.signing_algorithms {
            out["SigningAlgorithms"] = json!(a);
        }
        if let Some(a) = &m.key_agreement_algorithms {
            out["KeyAgreementAlgorithms"] = json!(a);
        }
        Ok(out)
    }

    pub(super) fn derive_shared_secret(&mut self) -> Result<Value, KmsError> {
        self.grant_tokens()?;
        match self.req.str("KeyAgreementAlgorithm")? {
            "ECDH" => {}
            a => {
                return Err(KmsError::constraint(
                    "KeyAgreementAlgorithm",
                    format!("Member must satisfy enum value set: [ECDH] (got {a:?})"),
                ))
            }
        }
        let peer = self.req.blob("PublicKey", 1, 8192)?;
        let recipient = self.recipient()?;
        let r = recipient.clone();
        let key = self.authorized_key("KeyId", "kms:DeriveSharedSecret", &|ctx| {
            ctx.set("kms:KeyAgreementAlgorithm", "ECDH");
            if let Some(r) = &r {
                r.add_condition_keys(ctx);
            }
        })?;
        self.usable(&key)?;
        self.expect_usage(&key, KeyUsage::KeyAgreement, "DeriveSharedSecret")?;
        self.dry_run()?;
        let material = self.store().material(&key.metadata.key_id, 1)?;
        let secret = crypto::derive_shared_secret(key.metadata.key_spec, &material, &peer)?;
        let mut out = json!({"KeyId": key.metadata.arn, "KeyAgreementAlgorithm": "ECDH", "KeyOrigin": "AWS_KMS"});
        match recipient {
            Some(r) => out["CiphertextForRecipient"] = b64(&r.seal(&secret)?).into(),
            None => out["SharedSecret"] = b64(&secret).into(),
        }
        Ok(out)
    }
}

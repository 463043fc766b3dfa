//! aws-sdk-kms with every release sealed to the enclave.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::{BehaviorVersion, Region};
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeyPairSpec, DataKeySpec, KeyAgreementAlgorithmSpec, KeyEncryptionMechanism, RecipientInfo};
use nekms_cms::RecipientKey;
use nekms_nsm::{AttestationRequest, Nsm};
use zeroize::Zeroizing;

use crate::http::ChannelHttpClient;

/// AWS credentials, set by the parent; held only in enclave memory.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
    /// Region of the KMS endpoint; `us-east-1` when the parent gives none (as kmstool does).
    pub region: String,
    pub expiration: Option<SystemTime>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("temporary", &self.session_token.is_some())
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// Why a KMS call from the enclave failed.
#[derive(Debug, thiserror::Error)]
pub enum EnclaveKmsError {
    #[error("no AWS credentials: the parent has not set any yet")]
    NoCredentials,
    #[error("the AWS credentials expired; the parent must push fresh ones")]
    CredentialsExpired,
    #[error("KMS refused: {code}: {message}")]
    Kms { code: String, message: String },
    #[error("cannot reach KMS: {0}")]
    Transport(String),
    #[error("the NSM could not attest: {0}")]
    Attestation(String),
    #[error("KMS's CiphertextForRecipient does not open with the enclave's key: {0}")]
    Recipient(String),
    #[error("KMS's answer lacks {0}")]
    Incomplete(&'static str),
}

impl EnclaveKmsError {
    /// The KMS exception name, when KMS answered with one.
    pub fn kms_code(&self) -> Option<&str> {
        match self {
            EnclaveKmsError::Kms { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// An AWS error message's first line: a wrong signature's message goes on
/// with the canonical request, which names the session token.
pub fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_owned()
}

fn sdk_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: fmt::Debug>(e: SdkError<E, R>) -> EnclaveKmsError {
    match (&e, e.code()) {
        (SdkError::ServiceError(_), Some(code)) => {
            EnclaveKmsError::Kms { code: code.to_owned(), message: first_line(e.message().unwrap_or_default()) }
        }
        _ => EnclaveKmsError::Transport(DisplayErrorContext(&e).to_string()),
    }
}

/// A plaintext and the KMS key that released it (its ARN, as KMS answered).
pub struct Decrypted {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub key_id: String,
}

/// A data key: the plaintext (sealed to the enclave on the way) and its KMS ciphertext.
pub struct DataKey {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub ciphertext_blob: Vec<u8>,
    pub key_id: String,
}

/// A data key pair: PKCS#8 private key (plaintext only in the enclave), SPKI public key, and the private key's KMS ciphertext.
pub struct DataKeyPair {
    pub private_key: Zeroizing<Vec<u8>>,
    pub public_key: Vec<u8>,
    pub private_key_ciphertext_blob: Vec<u8>,
}

/// A KMS client holding one caller's credentials (see [`EnclaveKms::session`]).
pub struct KmsSession {
    client: aws_sdk_kms::Client,
    expiration: Option<SystemTime>,
}

/// KMS as the enclave uses it.
pub struct EnclaveKms {
    nsm: Arc<dyn Nsm>,
    recipient: RecipientKey,
    http: ChannelHttpClient,
    endpoint: Option<String>,
    client: RwLock<Option<(aws_sdk_kms::Client, Credentials)>>,
}

impl EnclaveKms {
    /// `endpoint`: the KMS URL (`https://localhost:7701` for the local KMS);
    /// `None` means the region's public endpoint.
    pub fn new(nsm: Arc<dyn Nsm>, http: ChannelHttpClient, endpoint: Option<String>) -> Result<EnclaveKms, EnclaveKmsError> {
        let recipient = RecipientKey::generate().map_err(|e| EnclaveKmsError::Recipient(e.to_string()))?;
        Ok(EnclaveKms { nsm, recipient, http, endpoint, client: RwLock::new(None) })
    }

    /// Replace the credentials (the parent pushes fresh ones before they expire).
    pub fn set_credentials(&self, credentials: Credentials) {
        let client = self.client_for(&credentials);
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = Some((client, credentials));
    }

    /// A client with credentials of its own, for one caller (a kmstool
    /// connection's SetClient): it never replaces the enclave's credentials,
    /// which custody uses.
    pub fn session(&self, credentials: Credentials) -> KmsSession {
        KmsSession { client: self.client_for(&credentials), expiration: credentials.expiration }
    }

    fn client_for(&self, credentials: &Credentials) -> aws_sdk_kms::Client {
        let sdk_credentials = aws_sdk_kms::config::Credentials::new(
            credentials.access_key_id.clone(),
            credentials.secret_access_key.as_str(),
            credentials.session_token.as_ref().map(|t| t.to_string()),
            credentials.expiration,
            "nekms-parent",
        );
        let mut b = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(credentials.region.clone()))
            .credentials_provider(sdk_credentials)
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .http_client(self.http.clone());
        if let Some(e) = &self.endpoint {
            b = b.endpoint_url(e);
        }
        aws_sdk_kms::Client::from_conf(b.build())
    }

    /// The credentials' access key id, region and expiry (never the secret).
    pub fn credentials_summary(&self) -> Option<Credentials> {
        self.client.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, c)| Credentials {
            secret_access_key: Zeroizing::new(String::new()),
            // Kept as a marker that the credentials are temporary; the token itself stays put.
            session_token: c.session_token.as_ref().map(|_| Zeroizing::new(String::new())),
            ..c.clone()
        })
    }

    fn client(&self) -> Result<aws_sdk_kms::Client, EnclaveKmsError> {
        let guard = self.client.read().unwrap_or_else(|p| p.into_inner());
        let (client, creds) = guard.as_ref().ok_or(EnclaveKmsError::NoCredentials)?;
        if creds.expiration.is_some_and(|e| e <= SystemTime::now()) {
            return Err(EnclaveKmsError::CredentialsExpired);
        }
        Ok(client.clone())
    }

    /// The enclave's recipient public key (RSA-2048 SPKI).
    pub fn recipient_public_key(&self) -> Vec<u8> {
        self.recipient.public_key_der().expect("the public key was encoded at generation")
    }

    /// A fresh attestation document holding the recipient key.
    fn recipient_info(&self) -> Result<RecipientInfo, EnclaveKmsError> {
        let doc = self
            .nsm
            .attestation(AttestationRequest { public_key: Some(self.recipient_public_key()), ..Default::default() })
            .map_err(|e| EnclaveKmsError::Attestation(e.to_string()))?;
        Ok(RecipientInfo::builder()
            .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
            .attestation_document(Blob::new(doc))
            .build())
    }

    fn open(&self, sealed: Option<&Blob>) -> Result<Zeroizing<Vec<u8>>, EnclaveKmsError> {
        let sealed = sealed.ok_or(EnclaveKmsError::Incomplete("CiphertextForRecipient"))?;
        self.recipient.open(sealed.as_ref()).map_err(|e| EnclaveKmsError::Recipient(e.to_string()))
    }

    /// Decrypt a KMS ciphertext blob; the plaintext exists only here.
    pub async fn decrypt(
        &self,
        ciphertext: &[u8],
        context: &BTreeMap<String, String>,
        key_id: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, EnclaveKmsError> {
        Ok(self.decrypt_under(ciphertext, context, key_id).await?.plaintext)
    }

    /// As [`EnclaveKms::decrypt`], with the ARN of the KMS key that KMS says
    /// decrypted it, so the caller can check it against what it trusts.
    pub async fn decrypt_under(
        &self,
        ciphertext: &[u8],
        context: &BTreeMap<String, String>,
        key_id: Option<&str>,
    ) -> Result<Decrypted, EnclaveKmsError> {
        self.decrypt_as(None, ciphertext, context, key_id).await
    }

    /// As [`EnclaveKms::decrypt_under`], with a caller's own credentials
    /// (`session`) instead of the enclave's when given.
    pub async fn decrypt_as(
        &self,
        session: Option<&KmsSession>,
        ciphertext: &[u8],
        context: &BTreeMap<String, String>,
        key_id: Option<&str>,
    ) -> Result<Decrypted, EnclaveKmsError> {
        let client = match session {
            Some(s) if s.expiration.is_some_and(|e| e <= SystemTime::now()) => return Err(EnclaveKmsError::CredentialsExpired),
            Some(s) => s.client.clone(),
            None => self.client()?,
        };
        let mut req = client.decrypt().ciphertext_blob(Blob::new(ciphertext)).recipient(self.recipient_info()?);
        for (k, v) in context {
            req = req.encryption_context(k, v);
        }
        if let Some(k) = key_id {
            req = req.key_id(k);
        }
        let out = req.send().await.map_err(sdk_error)?;
        Ok(Decrypted { plaintext: self.open(out.ciphertext_for_recipient())?, key_id: out.key_id().unwrap_or_default().to_owned() })
    }

    /// A new data key of `spec` (AES_256, AES_128) or `number_of_bytes`.
    pub async fn generate_data_key(
        &self,
        key_id: &str,
        spec: Option<DataKeySpec>,
        number_of_bytes: Option<i32>,
        context: &BTreeMap<String, String>,
    ) -> Result<DataKey, EnclaveKmsError> {
        let mut req = self.client()?.generate_data_key().key_id(key_id).recipient(self.recipient_info()?);
        if let Some(s) = spec {
            req = req.key_spec(s);
        }
        if let Some(n) = number_of_bytes {
            req = req.number_of_bytes(n);
        }
        for (k, v) in context {
            req = req.encryption_context(k, v);
        }
        let out = req.send().await.map_err(sdk_error)?;
        Ok(DataKey {
            plaintext: self.open(out.ciphertext_for_recipient())?,
            ciphertext_blob: out.ciphertext_blob().ok_or(EnclaveKmsError::Incomplete("CiphertextBlob"))?.as_ref().to_vec(),
            key_id: out.key_id().unwrap_or_default().to_owned(),
        })
    }

    /// A new key pair whose private half is sealed to the enclave.
    pub async fn generate_data_key_pair(
        &self,
        key_id: &str,
        spec: DataKeyPairSpec,
        context: &BTreeMap<String, String>,
    ) -> Result<DataKeyPair, EnclaveKmsError> {
        let mut req = self.client()?.generate_data_key_pair().key_id(key_id).key_pair_spec(spec).recipient(self.recipient_info()?);
        for (k, v) in context {
            req = req.encryption_context(k, v);
        }
        let out = req.send().await.map_err(sdk_error)?;
        Ok(DataKeyPair {
            private_key: self.open(out.ciphertext_for_recipient())?,
            public_key: out.public_key().ok_or(EnclaveKmsError::Incomplete("PublicKey"))?.as_ref().to_vec(),
            private_key_ciphertext_blob: out
                .private_key_ciphertext_blob()
                .ok_or(EnclaveKmsError::Incomplete("PrivateKeyCiphertextBlob"))?
                .as_ref()
                .to_vec(),
        })
    }

    /// `n` random bytes from KMS, sealed to the enclave on the way.
    pub async fn generate_random(&self, n: i32) -> Result<Zeroizing<Vec<u8>>, EnclaveKmsError> {
        let out = self.client()?.generate_random().number_of_bytes(n).recipient(self.recipient_info()?).send().await.map_err(sdk_error)?;
        self.open(out.ciphertext_for_recipient())
    }

    /// ECDH with a KMS KEY_AGREEMENT key; the shared secret exists only here.
    pub async fn derive_shared_secret(&self, key_id: &str, peer_public_key: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnclaveKmsError> {
        let out = self
            .client()?
            .derive_shared_secret()
            .key_id(key_id)
            .key_agreement_algorithm(KeyAgreementAlgorithmSpec::Ecdh)
            .public_key(Blob::new(peer_public_key))
            .recipient(self.recipient_info()?)
            .send()
            .await
            .map_err(sdk_error)?;
        self.open(out.ciphertext_for_recipient())
    }

    /// What KMS says about a key, read with the enclave's own credentials
    /// through its own TLS session (the parent can make this fail, not lie):
    /// DescribeKey, GetKeyPolicy (`default`) and ListGrants.
    pub async fn key_facts(&self, key_id: &str) -> Result<KeyFacts, EnclaveKmsError> {
        let client = self.client()?;
        let described = client.describe_key().key_id(key_id).send().await.map_err(sdk_error)?;
        let meta = described.key_metadata().ok_or(EnclaveKmsError::Incomplete("KeyMetadata"))?;
        let policy = client.get_key_policy().key_id(key_id).policy_name("default").send().await.map_err(sdk_error)?;
        let grants = client.list_grants().key_id(key_id).limit(100).send().await.map_err(sdk_error)?;
        Ok(KeyFacts {
            arn: meta.arn().unwrap_or_default().to_owned(),
            key_spec: meta.key_spec().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            origin: meta.origin().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            key_state: meta.key_state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            multi_region: meta.multi_region().unwrap_or(false),
            custom_key_store: meta.custom_key_store_id().is_some(),
            policy: policy.policy().ok_or(EnclaveKmsError::Incomplete("Policy"))?.to_owned(),
            grants: grants.grants().len() + usize::from(grants.truncated()),
        })
    }
}

/// A key as KMS describes it ([`EnclaveKms::key_facts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFacts {
    pub arn: String,
    pub key_spec: String,
    pub origin: String,
    pub key_state: String,
    pub multi_region: bool,
    pub custom_key_store: bool,
    /// The key policy, JSON.
    pub policy: String,
    /// Grants on the key (100 or more when listed as truncated).
    pub grants: usize,
}

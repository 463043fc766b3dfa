//! The native RPC, served by the enclave ([`nekms_rpc`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nekms_keys::record::CALLER_PREFIX;
use nekms_kms_client::{DataKeySpec, EnclaveKmsError};
use nekms_nsm::{AttestationRequest, NsmError, MAX_NONCE, MAX_USER_DATA};
use nekms_rpc::{CredentialsUpdate, Description, ErrorCode, Handler, NsmInfo, PcrInfo, Request, Response, RpcError, Secret};

use zeroize::Zeroizing;

use crate::Enclave;

/// The PCRs a KMS policy can name.
pub const POLICY_PCRS: [u16; 6] = [0, 1, 2, 3, 4, 8];

/// Largest GenerateRandom KMS allows.
const MAX_RANDOM: u32 = 1024;

/// How a KMS failure inside the enclave reaches the caller.
pub fn kms_error(e: EnclaveKmsError) -> RpcError {
    {
        let code = match &e {
            EnclaveKmsError::NoCredentials => ErrorCode::NoCredentials,
            EnclaveKmsError::CredentialsExpired => ErrorCode::CredentialsExpired,
            EnclaveKmsError::Kms { .. } => ErrorCode::Kms,
            EnclaveKmsError::Transport(_) => ErrorCode::Unavailable,
            EnclaveKmsError::Attestation(_) => ErrorCode::Attestation,
            EnclaveKmsError::Recipient(_) | EnclaveKmsError::Incomplete(_) => ErrorCode::Internal,
        };
        RpcError { code, kms_code: e.kms_code().map(str::to_owned), message: e.to_string(), pkcs11: None }
    }
}

pub(crate) fn nsm_error(e: NsmError) -> RpcError {
    RpcError::new(ErrorCode::Attestation, e.to_string())
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn check_len(name: &str, field: &Option<Vec<u8>>, max: usize) -> Result<(), RpcError> {
    match field {
        Some(v) if v.len() > max => Err(RpcError::bad_request(format!("{name} is {} bytes; the NSM takes at most {max}", v.len()))),
        _ => Ok(()),
    }
}

impl Enclave {
    /// What Describe answers.
    pub fn description(&self) -> Result<Description, RpcError> {
        let d = self.nsm.describe().map_err(nsm_error)?;
        let mut pcrs = Vec::new();
        for index in POLICY_PCRS {
            let state = self.nsm.describe_pcr(index).map_err(nsm_error)?;
            pcrs.push(PcrInfo { index, locked: state.locked, value: state.value.0.to_vec() });
        }
        let recipient = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.kms.recipient_public_key());
        Ok(Description {
            protocol_version: *nekms_rpc::protocol::VERSIONS.last().expect("at least one version"),
            agent: format!("nekms-enclave {}", env!("CARGO_PKG_VERSION")),
            simulated: self.nsm.is_simulated(),
            nsm: NsmInfo {
                module_id: d.module_id,
                version: format!("{}.{}.{}", d.version.0, d.version.1, d.version.2),
                max_pcrs: d.max_pcrs,
                locked_pcrs: d.locked_pcrs.into_iter().collect(),
                digest: d.digest,
            },
            pcrs,
            kms_endpoint: self.kms_endpoint.clone().unwrap_or_else(|| "https://kms.<region>.amazonaws.com".into()),
            proxy: self.proxy.clone(),
            region: self.region.clone(),
            kmstool: self.kmstool.clone(),
            credentials: self.credentials_info(),
            recipient_key_sha256: recipient.as_ref().to_vec(),
            key_cache: Some(self.keys.info()),
            audit: Some(nekms_rpc::protocol::AuditInfo {
                written: self.audit.written.load(std::sync::atomic::Ordering::Relaxed),
                lost: self.audit.dropped.load(std::sync::atomic::Ordering::Relaxed),
            }),
            trust: Some(self.trust_info()),
        })
    }

    /// The trust settings, for Describe.
    pub fn trust_info(&self) -> nekms_rpc::TrustInfo {
        let (parent_decrypt, keys) = self.trust.parent_decrypt();
        nekms_rpc::TrustInfo {
            custody_kms_keys: self.trust.custody_keys().iter().map(|k| k.to_string()).collect(),
            origin_pcr0: self.trust.origin_pcr0().iter().map(|p| p.to_hex()).collect(),
            custody_trust: self.trust.custody_trust().into(),
            origin_pcr8: self.trust.origin_pcr8().iter().map(|p| p.to_hex()).collect(),
            migration_approvers: self.migrations.summary().0,
            migration_threshold: self.migrations.summary().1 as u32,
            parent_decrypt,
            parent_decrypt_keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    /// A document for a caller: its nonce, its user_data behind
    /// [`CALLER_PREFIX`], and never a public key it chose (rule
    /// attest-own-keys): such a document would be a KMS Recipient for
    /// whoever holds the private half.
    fn attest(&self, nonce: Option<Vec<u8>>, user_data: Option<Vec<u8>>, public_key: Option<Vec<u8>>) -> Result<Vec<u8>, RpcError> {
        if public_key.is_some() {
            return Err(RpcError::refused(
                "rule attest-own-keys: the enclave attests only keys it holds; a document over a caller's public key would let that caller receive what KMS releases to this enclave",
            ));
        }
        check_len("nonce", &nonce, MAX_NONCE)?;
        check_len("user_data", &user_data, MAX_USER_DATA - CALLER_PREFIX.len())?;
        let mut data = CALLER_PREFIX.to_vec();
        data.extend_from_slice(user_data.as_deref().unwrap_or_default());
        self.nsm.attestation(AttestationRequest { user_data: Some(data), nonce, public_key: None }).map_err(nsm_error)
    }

    /// KMS Decrypt for a caller, under the parent-decrypt rules ([`crate::trust`]).
    pub async fn parent_decrypt(
        &self,
        ciphertext: &[u8],
        context: &BTreeMap<String, String>,
        key_id: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, RpcError> {
        self.parent_decrypt_as(None, ciphertext, context, key_id).await
    }

    /// As [`Enclave::parent_decrypt`], with a caller's own credentials when
    /// given (a kmstool connection's SetClient).
    pub async fn parent_decrypt_as(
        &self,
        session: Option<&nekms_kms_client::KmsSession>,
        ciphertext: &[u8],
        context: &BTreeMap<String, String>,
        key_id: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, RpcError> {
        self.trust.check_parent_request(context, key_id)?;
        let out = self.kms.decrypt_as(session, ciphertext, context, key_id).await.map_err(kms_error)?;
        // Dropping `out` on refusal wipes the plaintext.
        self.trust.check_parent_answer(&out.key_id)?;
        Ok(out.plaintext)
    }

    /// KMS GenerateDataKey for a caller, under the same rules.
    pub async fn parent_data_key(
        &self,
        key_id: &str,
        spec: Option<DataKeySpec>,
        number_of_bytes: Option<i32>,
        context: &BTreeMap<String, String>,
    ) -> Result<nekms_kms_client::DataKey, RpcError> {
        self.trust.check_parent_request(context, Some(key_id))?;
        let key = self.kms.generate_data_key(key_id, spec, number_of_bytes, context).await.map_err(kms_error)?;
        self.trust.check_parent_answer(&key.key_id)?;
        Ok(key)
    }

    fn credentials_from(&self, update: CredentialsUpdate) -> Result<nekms_rpc::CredentialsInfo, RpcError> {
        if update.access_key_id.is_empty() || update.secret_access_key.expose().is_empty() {
            return Err(RpcError::bad_request("SetCredentials requires an access key id and a secret access key"));
        }
        if let Some(r) = &update.region {
            crate::check_region(r).map_err(RpcError::bad_request)?;
        }
        let expiration = update.expiration.map(|s| UNIX_EPOCH + Duration::from_secs(s));
        if expiration.is_some_and(|e| e <= SystemTime::now()) {
            return Err(RpcError::new(ErrorCode::CredentialsExpired, "these credentials have already expired"));
        }
        Ok(self.set_credentials(
            update.access_key_id,
            update.secret_access_key.0,
            update.session_token.map(|t| t.0),
            update.region,
            expiration,
        ))
    }

    /// The credentials in force, without their secrets.
    pub fn credentials_info(&self) -> Option<nekms_rpc::CredentialsInfo> {
        self.kms.credentials_summary().map(|c| nekms_rpc::CredentialsInfo {
            access_key_id: c.access_key_id,
            region: c.region,
            temporary: c.session_token.is_some() || c.expiration.is_some(),
            expiration: c.expiration.map(unix_seconds),
        })
    }
}

fn data_key_spec(spec: Option<&str>, bytes: Option<u32>) -> Result<Option<DataKeySpec>, RpcError> {
    match (spec, bytes) {
        (Some(_), Some(_)) => Err(RpcError::bad_request("give key_spec or number_of_bytes, not both")),
        (None, None) => Err(RpcError::bad_request("GenerateDataKey requires key_spec (AES_256, AES_128) or number_of_bytes")),
        (Some("AES_256" | "AES-256"), None) => Ok(Some(DataKeySpec::Aes256)),
        (Some("AES_128" | "AES-128"), None) => Ok(Some(DataKeySpec::Aes128)),
        (Some(other), None) => Err(RpcError::bad_request(format!("unknown key_spec {other:?}; use AES_256 or AES_128"))),
        (None, Some(n)) if (1..=1024).contains(&n) => Ok(None),
        (None, Some(n)) => Err(RpcError::bad_request(format!("number_of_bytes must be 1-1024, not {n}"))),
    }
}

/// The enclave as the PKCS#11 module's socket serves it: the module's
/// calls only (slots, handles, login, sign, decrypt, random, the public
/// operations of `p11_public`), never
/// provisioning or the rest of the RPC, so p11-kit's server (C code that
/// parses what any client sends) cannot reach more than a token user can.
/// One per connection (one module process), which opens at most
/// [`crate::p11::MAX_HANDLES_PER_CONNECTION`] handles on a token.
pub struct P11Only {
    enclave: std::sync::Arc<Enclave>,
    opened: std::sync::Mutex<Vec<[u8; 32]>>,
}

impl P11Only {
    pub fn new(enclave: std::sync::Arc<Enclave>) -> P11Only {
        P11Only { enclave, opened: Default::default() }
    }
}

/// A connection that ends takes its handles with it.
impl Drop for P11Only {
    fn drop(&mut self) {
        let opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        self.enclave.p11.close_all(&opened);
    }
}

impl Handler for P11Only {
    async fn handle(&self, request: Request) -> Result<Response, RpcError> {
        let decision = crate::audit::of_request(&self.enclave, "p11", &request);
        let outcome = self.dispatch(request).await;
        if let Some(d) = decision {
            self.enclave.audit.decision(d, &outcome);
        }
        outcome
    }
}

impl P11Only {
    async fn dispatch(&self, request: Request) -> Result<Response, RpcError> {
        use nekms_rpc::P11Request as P;
        match request {
            Request::P11(P::Open { slot }) => {
                let mut mine = self.opened.lock().unwrap_or_else(|p| p.into_inner());
                let handle = self.enclave.p11.open_for(slot, &mut mine)?;
                Ok(Response::P11(nekms_rpc::P11Response::Opened { handle }))
            }
            Request::P11(
                r @ (P::Slots
                | P::Slot { .. }
                | P::Close { .. }
                | P::Login { .. }
                | P::Logout { .. }
                | P::Sign { .. }
                | P::Decrypt { .. }
                | P::Random { .. }
                | P::GenerateKeyPair { .. }
                | P::Verify { .. }
                | P::RsaPublic { .. }
                | P::Encrypt { .. }),
            ) => Ok(Response::P11(self.enclave.p11_call(r).await?)),
            other => Err(RpcError::refused(format!("{} is not served on the PKCS#11 module's socket", other.name()))),
        }
    }
}

impl Handler for Enclave {
    async fn handle(&self, request: Request) -> Result<Response, RpcError> {
        let decision = crate::audit::of_request(self, "rpc", &request);
        let outcome = self.dispatch(request).await;
        if let Some(d) = decision {
            self.audit.decision(d, &outcome);
        }
        outcome
    }
}

impl Enclave {
    async fn dispatch(&self, request: Request) -> Result<Response, RpcError> {
        match request {
            Request::Describe => Ok(Response::Described(Box::new(self.description()?))),
            Request::Attest { nonce, user_data, public_key } => {
                Ok(Response::Attested { document: self.attest(nonce, user_data, public_key)? })
            }
            Request::SetCredentials(update) => Ok(Response::CredentialsSet(self.credentials_from(update)?)),
            Request::Decrypt { ciphertext, encryption_context, key_id } => {
                let plaintext = self.parent_decrypt(&ciphertext, &encryption_context, key_id.as_deref()).await?;
                Ok(Response::Decrypted { plaintext: Secret::from(plaintext) })
            }
            Request::GenerateDataKey { key_id, key_spec, number_of_bytes, encryption_context } => {
                let spec = data_key_spec(key_spec.as_deref(), number_of_bytes)?;
                let n = if spec.is_none() { number_of_bytes.map(|n| n as i32) } else { None };
                let k = self.parent_data_key(&key_id, spec, n, &encryption_context).await?;
                Ok(Response::DataKey { key_id: k.key_id, ciphertext_blob: k.ciphertext_blob, plaintext: Secret::from(k.plaintext) })
            }
            Request::GenerateRandom { length } => {
                if !(1..=MAX_RANDOM).contains(&length) {
                    return Err(RpcError::bad_request(format!("length must be 1-{MAX_RANDOM}, not {length}")));
                }
                let bytes = self.kms.generate_random(length as i32).await.map_err(kms_error)?;
                Ok(Response::Random { bytes: Secret::from(bytes) })
            }
            Request::GenerateKey(req) => Ok(Response::KeyCreated { record: Box::new(self.generate_key(req).await?) }),
            Request::ImportKey(req) => Ok(Response::KeyCreated { record: Box::new(self.import_key(req).await?) }),
            Request::Sign { record, scheme, payload } => Ok(Response::Signed(self.sign(&record, scheme, &payload).await?)),
            Request::CheckRecord { record } => {
                self.open(&record).await?;
                Ok(Response::RecordChecked)
            }
            Request::KeyDecrypt { record, hash, ciphertext } => {
                Ok(Response::Decrypted { plaintext: Secret::from(self.key_decrypt(&record, hash, &ciphertext).await?) })
            }
            Request::P11(request) => Ok(Response::P11(self.p11_call(request).await?)),
            Request::Privval(request) => Ok(Response::Privval(self.privval_call(request).await?)),
            Request::Migrate(request) => Ok(Response::Migrate(self.migrate_call(request).await?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_key_specs_are_checked_before_kms_is_asked() {
        assert!(matches!(data_key_spec(Some("AES_256"), None), Ok(Some(DataKeySpec::Aes256))));
        assert!(matches!(data_key_spec(Some("AES-128"), None), Ok(Some(DataKeySpec::Aes128))));
        assert!(matches!(data_key_spec(None, Some(64)), Ok(None)));
        for (spec, n) in [(Some("AES_512"), None), (None, None), (Some("AES_256"), Some(32)), (None, Some(0)), (None, Some(5000))] {
            assert_eq!(data_key_spec(spec, n).unwrap_err().code, ErrorCode::BadRequest, "{spec:?} {n:?}");
        }
    }
}

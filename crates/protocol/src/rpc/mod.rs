//! The messages, and how they are written on the wire.
//!
//! Every frame is a 4-byte big-endian length and a CBOR body
//! ([`nekms_transport::FrameCodec`]). The client speaks first:
//!
//! ```text
//! client: Hello { protocol: "nekms-rpc", versions: [1], agent }
//! server: Welcome { version: 1, agent, max_frame, max_in_flight }   (or Goodbye { message }, then close)
//! client: Call { id, request }   ... any number, without waiting
//! server: Reply { id, outcome }  ... in the order they finish
//! ```
//!
//! A call whose request the server does not understand (an unknown operation
//! from a newer client, a field of the wrong type) gets an error reply with
//! the same id and the connection stays up. A frame that is not a `Call` at
//! all, or that exceeds the maximum, gets `Goodbye` and the connection closes.

use std::collections::BTreeMap;
use std::fmt;

use crate::{KeyRecord, KeySpec, Payload, Scheme, Signature};

mod migrate;
mod p11;
mod privval;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The name both sides put in the handshake.
pub const PROTOCOL: &str = "nekms-rpc";
/// Protocol versions this build speaks, oldest first.
pub const VERSIONS: &[u16] = &[1];

/// Bytes that must not linger: zeroized on drop, never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(bytes))
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub fn into_zeroizing(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl From<Zeroizing<Vec<u8>>> for Secret {
    fn from(z: Zeroizing<Vec<u8>>) -> Secret {
        Secret(z)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.0.len())
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        let buf = serde_bytes::ByteBuf::deserialize(d)?;
        Ok(Secret::new(buf.into_vec()))
    }
}

/// A secret string (a secret access key, a session token).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(pub Zeroizing<String>);

impl Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        Ok(SecretString(Zeroizing::new(String::deserialize(d)?)))
    }
}

impl SecretString {
    pub fn new(s: impl Into<String>) -> SecretString {
        SecretString(Zeroizing::new(s.into()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(redacted)")
    }
}

/// What the client sends first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: String,
    pub versions: Vec<u16>,
    /// The client's name and version, for the server's log.
    pub agent: String,
}

/// Every frame the client sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientFrame {
    Hello(Hello),
    /// `request` is kept as a CBOR value until the server interprets it, so a
    /// request it cannot read costs that call only, not the connection.
    Call {
        id: u64,
        request: ciborium::Value,
    },
}

/// A `Call` as the client writes it: the same bytes as
/// `ClientFrame::Call { id, request: request_to_value(request) }`, without
/// building the intermediate value.
#[derive(Serialize)]
#[doc(hidden)]
pub enum CallRef<'a> {
    Call { id: u64, request: &'a Request },
}

/// A frame as the server reads it when the request is one it knows; any
/// other frame is read again as a [`ClientFrame`] to say what was wrong.
#[derive(Deserialize)]
pub(crate) enum KnownCall {
    Call { id: u64, request: Request },
}

/// A frame read by the server: a call it can run, or a `ClientFrame` whose
/// request it could not read (answered with BadRequest) or that is no call.
pub enum Incoming {
    Known { id: u64, request: Request },
    Other(Result<ClientFrame, DecodeError>),
}

/// Read a frame body on the server.
pub fn decode_incoming(bytes: &[u8]) -> Incoming {
    match decode::<KnownCall>(bytes) {
        Ok(KnownCall::Call { id, request }) => Incoming::Known { id, request },
        Err(_) => Incoming::Other(decode::<ClientFrame>(bytes)),
    }
}

/// Every frame the server sends.
#[derive(Debug, Serialize, Deserialize)]
pub enum ServerFrame {
    Welcome {
        version: u16,
        agent: String,
        max_frame: u32,
        max_in_flight: u32,
    },
    Reply {
        id: u64,
        outcome: Result<Response, RpcError>,
    },
    /// The server is closing the connection, and why.
    Goodbye {
        message: String,
    },
}

/// The calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Versions, the NSM, the PCRs, whether simulated, what the enclave is connected to.
    Describe,
    /// An attestation document carrying the caller's nonce, and its
    /// user_data after the prefix `nekms-caller:v1:` (at most the NSM's limit
    /// less the prefix). The enclave attests only keys it holds: a
    /// `public_key` is always refused.
    Attest {
        #[serde(default, with = "serde_bytes")]
        nonce: Option<Vec<u8>>,
        #[serde(default, with = "serde_bytes")]
        user_data: Option<Vec<u8>>,
        #[serde(default, with = "serde_bytes")]
        public_key: Option<Vec<u8>>,
    },
    /// Replace the enclave's AWS credentials.
    SetCredentials(CredentialsUpdate),
    /// KMS Decrypt with a Recipient; the plaintext comes back to the caller
    /// unless the enclave's rules forbid it (a reserved context key, a
    /// custody KMS key, parent decryption off or limited by configuration).
    Decrypt {
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
        #[serde(default, deserialize_with = "crate::context::unique_map")]
        encryption_context: BTreeMap<String, String>,
        #[serde(default)]
        key_id: Option<String>,
    },
    /// KMS GenerateDataKey with a Recipient: `key_spec` (`AES_256`, `AES_128`) or `number_of_bytes`.
    GenerateDataKey {
        key_id: String,
        #[serde(default)]
        key_spec: Option<String>,
        #[serde(default)]
        number_of_bytes: Option<u32>,
        #[serde(default, deserialize_with = "crate::context::unique_map")]
        encryption_context: BTreeMap<String, String>,
    },
    /// KMS GenerateRandom with a Recipient.
    GenerateRandom { length: u32 },
    /// Make a key inside the enclave and seal it into a record.
    GenerateKey(GenerateKey),
    /// Decrypt an administrator's KMS-encrypted private key and seal it into a record.
    ImportKey(ImportKey),
    /// Open a record's key (or find it in the cache) and sign.
    Sign {
        record: KeyRecord,
        /// The spec's default when absent.
        #[serde(default)]
        scheme: Option<Scheme>,
        payload: Payload,
    },
    /// Decrypt with a record's RSA key, RSAES-OAEP with MGF1 over `hash` and
    /// no label: only a key made to decrypt (`nekms:usage=sign,decrypt` or
    /// `decrypt`, sealed into its record when it was made) does; the plaintext is the
    /// caller's (AWS KMS's Decrypt with an `ENCRYPT_DECRYPT` RSA key).
    KeyDecrypt {
        record: KeyRecord,
        hash: crate::OaepHash,
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
    },
    /// Open a record (or find it opened) under every rule Sign applies, and
    /// say only whether it opened: the agent hands out, verifies with and
    /// encrypts to a record's public key only once the enclave has opened
    /// that exact record, so a record changed in the store is caught there.
    CheckRecord { record: KeyRecord },
    /// PKCS#11 tokens: provisioning from the parent, and the calls of the
    /// PKCS#11 module (`libnekms_p11.so`).
    P11(P11Request),
    /// The validator signer: its chains, their double-sign state, its figures.
    Privval(PrivvalRequest),
    /// Moving custody to another KMS key under a quorum of approvers.
    Migrate(MigrateRequest),
}

pub use migrate::{Approval, MigrateItem, MigrateRequest, MigrateResponse, MigrationCheck};
pub use p11::{P11Key, P11PublicKey, P11Request, P11Response, P11Slot, P11Token, PinVerifier};
pub use privval::{PrivvalChain, PrivvalRequest, PrivvalResponse, PrivvalStatus};

/// Where a new key's entropy comes from. NSM GetRandom and the OS generator
/// are always mixed in; `Kms` adds KMS GenerateRandom (with a Recipient).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entropy {
    #[default]
    Nsm,
    Kms,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateKey {
    pub key_id: String,
    pub spec: KeySpec,
    /// The KMS key the data key is generated under: one of the custody keys
    /// pinned in the enclave's configuration (ARN or key id); absent means
    /// the only pinned key.
    #[serde(default)]
    pub kms_key_id: Option<String>,
    #[serde(default)]
    pub entropy: Entropy,
    /// Extra encryption-context entries (the `nekms:` ones are added; a
    /// caller's key in that namespace, in any casing, is refused).
    #[serde(default, deserialize_with = "crate::context::unique_map")]
    pub encryption_context: BTreeMap<String, String>,
    /// Put into the attestation document that vouches for the key.
    #[serde(default, with = "serde_bytes")]
    pub nonce: Option<Vec<u8>>,
    /// An RSA key that may decrypt as well as sign (a PKCS#11 token's
    /// `--decrypt`): fixed now, in the record's context (`nekms:usage`),
    /// and never granted later.
    #[serde(default)]
    pub decrypt: bool,
    /// A validator's consensus key (`nekms:usage=privval`): only the
    /// validator signer signs with it; the general Sign refuses it.
    #[serde(default)]
    pub privval: bool,
    /// An RSA key that decrypts and never signs (`nekms:usage=decrypt`,
    /// AWS KMS's `ENCRYPT_DECRYPT`); not with `decrypt` or `privval`.
    #[serde(default)]
    pub decrypt_only: bool,
}

impl GenerateKey {
    /// A key that signs only, under the only pinned custody key, from the
    /// NSM's entropy (with the OS generator's), with no extra context.
    pub fn new(key_id: impl Into<String>, spec: KeySpec) -> GenerateKey {
        GenerateKey {
            key_id: key_id.into(),
            spec,
            kms_key_id: None,
            entropy: Entropy::Nsm,
            encryption_context: BTreeMap::new(),
            nonce: None,
            decrypt: false,
            privval: false,
            decrypt_only: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportKey {
    pub key_id: String,
    /// Required for raw secrets; checked against encoded keys.
    #[serde(default)]
    pub spec: Option<KeySpec>,
    /// The KMS key the record's data key is generated under: a pinned
    /// custody key, as for [`GenerateKey`].
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// The administrator's import ciphertext (`nekms key encrypt-for-import`):
    /// KMS Encrypt under a pinned custody key with the context
    /// `nekms:purpose=import`, `nekms:key-id=<key_id>`.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// The administrator's own entries in that context, if any (never reserved ones).
    #[serde(default, deserialize_with = "crate::context::unique_map")]
    pub ciphertext_context: BTreeMap<String, String>,
    /// The KMS key of the ciphertext; absent means the record's.
    #[serde(default)]
    pub ciphertext_key_id: Option<String>,
    #[serde(default, deserialize_with = "crate::context::unique_map")]
    pub encryption_context: BTreeMap<String, String>,
    #[serde(default, with = "serde_bytes")]
    pub nonce: Option<Vec<u8>>,
    /// As for [`GenerateKey`].
    #[serde(default)]
    pub decrypt: bool,
    #[serde(default)]
    pub privval: bool,
}

impl Request {
    /// The operation's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Describe => "Describe",
            Request::Attest { .. } => "Attest",
            Request::SetCredentials(_) => "SetCredentials",
            Request::Decrypt { .. } => "Decrypt",
            Request::GenerateDataKey { .. } => "GenerateDataKey",
            Request::GenerateRandom { .. } => "GenerateRandom",
            Request::GenerateKey(_) => "GenerateKey",
            Request::ImportKey(_) => "ImportKey",
            Request::Sign { .. } => "Sign",
            Request::KeyDecrypt { .. } => "KeyDecrypt",
            Request::CheckRecord { .. } => "CheckRecord",
            Request::P11(_) => "P11",
            Request::Privval(_) => "Privval",
            Request::Migrate(_) => "Migrate",
        }
    }
}

/// AWS credentials pushed by the parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialsUpdate {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    #[serde(default)]
    pub session_token: Option<SecretString>,
    /// The KMS region; the enclave's own setting wins, then this, then us-east-1.
    #[serde(default)]
    pub region: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default)]
    pub expiration: Option<u64>,
}

/// The answers, one per request kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Described(Box<Description>),
    Attested {
        #[serde(with = "serde_bytes")]
        document: Vec<u8>,
    },
    CredentialsSet(CredentialsInfo),
    Decrypted {
        plaintext: Secret,
    },
    DataKey {
        key_id: String,
        #[serde(with = "serde_bytes")]
        ciphertext_blob: Vec<u8>,
        plaintext: Secret,
    },
    Random {
        bytes: Secret,
    },
    /// A new record; its `attestation` commits to the public key.
    KeyCreated {
        record: Box<KeyRecord>,
    },
    Signed(Signature),
    /// The record opened: its public key is its sealed key's.
    RecordChecked,
    P11(P11Response),
    Privval(PrivvalResponse),
    Migrate(MigrateResponse),
}

/// What the enclave says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    pub protocol_version: u16,
    /// `nekms-enclave 0.1.0`.
    pub agent: String,
    pub simulated: bool,
    pub nsm: NsmInfo,
    /// PCRs 0-4 and 8, the ones KMS policies can name.
    pub pcrs: Vec<PcrInfo>,
    /// What the enclave uses to reach KMS.
    pub kms_endpoint: String,
    pub proxy: String,
    /// The region the enclave insists on, if any.
    pub region: Option<String>,
    /// Where kmstool's protocol is served.
    pub kmstool: Option<String>,
    pub credentials: Option<CredentialsInfo>,
    /// SHA-256 of the recipient public key (SPKI DER) KMS seals answers to.
    #[serde(with = "serde_bytes")]
    pub recipient_key_sha256: Vec<u8>,
    /// The opened-key cache.
    #[serde(default)]
    pub key_cache: Option<CacheInfo>,
    /// What the enclave's measured configuration trusts.
    #[serde(default)]
    pub trust: Option<TrustInfo>,
    /// The audit trail's lines so far: written, and dropped because the parent did not take them.
    #[serde(default)]
    pub audit: Option<AuditInfo>,
}

/// The audit trail's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditInfo {
    pub written: u64,
    pub lost: u64,
}

/// The trust settings in force (from the measured configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustInfo {
    /// KMS key ARNs custody seals under and opens from.
    pub custody_kms_keys: Vec<String>,
    /// PCR0 values (hex) whose origin documents records may carry; this image's first.
    pub origin_pcr0: Vec<String>,
    /// `"pcr0"`, or `"pcr8"` when this image trusts every image of its own signer.
    #[serde(default)]
    pub custody_trust: String,
    /// PCR8 values (hex): signers whose images' origin documents records may carry.
    #[serde(default)]
    pub origin_pcr8: Vec<String>,
    /// Who may approve moving custody to another key (approver ids), and how many must.
    #[serde(default)]
    pub migration_approvers: Vec<String>,
    #[serde(default)]
    pub migration_threshold: u32,
    /// Whether Decrypt/GenerateDataKey serve the parent at all.
    pub parent_decrypt: bool,
    /// If not empty, the only keys they may use.
    pub parent_decrypt_keys: Vec<String>,
}

/// The enclave's cache of opened keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInfo {
    pub entries: u32,
    pub capacity: u32,
    pub ttl_seconds: u64,
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NsmInfo {
    pub module_id: String,
    pub version: String,
    pub max_pcrs: u16,
    pub locked_pcrs: Vec<u16>,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcrInfo {
    pub index: u16,
    pub locked: bool,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// The credentials in force, without the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialsInfo {
    pub access_key_id: String,
    pub region: String,
    pub temporary: bool,
    /// Seconds since the Unix epoch.
    pub expiration: Option<u64>,
}

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or names an operation this enclave lacks.
    BadRequest,
    /// The enclave has no credentials yet.
    NoCredentials,
    /// The credentials expired.
    CredentialsExpired,
    /// KMS answered with an exception (`kms_code` names it).
    Kms,
    /// KMS, the proxy or the network is unreachable; retrying may help.
    Unavailable,
    /// The NSM could not produce a document.
    Attestation,
    /// A key record that fails its checks: tampered with, mixed with another
    /// record, or not matching its public key.
    RecordRejected,
    /// The enclave's rules forbid the operation; the message names the rule.
    Refused,
    /// Anything else inside the enclave.
    Internal,
    /// A PKCS#11 failure; `pkcs11` holds the CKR_ value.
    Pkcs11,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: ErrorCode,
    /// The KMS exception name (`AccessDeniedException`), when `code` is `Kms`.
    #[serde(default)]
    pub kms_code: Option<String>,
    pub message: String,
    /// The CK_RV, when `code` is `Pkcs11`.
    #[serde(default)]
    pub pkcs11: Option<u64>,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RpcError {
        RpcError { code, kms_code: None, message: message.into(), pkcs11: None }
    }
    /// A PKCS#11 failure with its CKR_ value.
    pub fn pkcs11(rv: u64, message: impl Into<String>) -> RpcError {
        RpcError { code: ErrorCode::Pkcs11, kms_code: None, message: message.into(), pkcs11: Some(rv) }
    }
    pub fn bad_request(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::BadRequest, message)
    }
    pub fn refused(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::Refused, message)
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[error("undecodable frame: {0}")]
pub struct DecodeError(String);

/// CBOR for one frame body.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    ciborium::into_writer(value, &mut out).expect("serializing to a Vec cannot fail");
    out
}

/// CBOR for one frame body that carries a secret (a PIN, a plaintext): every
/// buffer the encoding outgrows is wiped before it is freed, and so is the
/// result when dropped.
pub fn encode_secret<T: Serialize>(value: &T) -> Zeroizing<Vec<u8>> {
    /// A writer whose growth copies into a new zeroizing buffer.
    struct Wiped(Zeroizing<Vec<u8>>);
    impl std::io::Write for Wiped {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            if self.0.len() + data.len() > self.0.capacity() {
                let mut grown = Zeroizing::new(Vec::with_capacity((self.0.len() + data.len()).max(2 * self.0.capacity())));
                grown.extend_from_slice(&self.0);
                self.0 = grown;
            }
            self.0.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Wiped(Zeroizing::new(Vec::with_capacity(1024)));
    ciborium::into_writer(value, &mut out).expect("serializing to memory cannot fail");
    out.0
}

/// Read one frame body; trailing bytes are an error.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut reader = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut reader, 64).map_err(|e| DecodeError(e.to_string()))?;
    if !reader.is_empty() {
        return Err(DecodeError(format!("{} bytes after the CBOR item", reader.len())));
    }
    Ok(value)
}

/// Interpret a call's request value.
pub fn request_from_value(value: ciborium::Value) -> Result<Request, RpcError> {
    value.deserialized().map_err(|e| RpcError::bad_request(format!("unknown or malformed request: {e}")))
}

/// A request as the value a `Call` carries.
pub fn request_to_value(request: &Request) -> ciborium::Value {
    ciborium::Value::serialized(request).expect("every request serializes")
}

/// The highest version both sides speak.
pub fn negotiate(offered: &[u16]) -> Option<u16> {
    VERSIONS.iter().rev().copied().find(|v| offered.contains(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_survives_the_round_trip() {
        let requests = vec![
            Request::Describe,
            Request::Attest { nonce: Some(vec![1, 2]), user_data: None, public_key: Some(vec![3; 300]) },
            Request::SetCredentials(CredentialsUpdate {
                access_key_id: "ASIAEXAMPLE".into(),
                secret_access_key: SecretString::new("s3cr3t"),
                session_token: Some(SecretString::new("tok")),
                region: Some("eu-west-1".into()),
                expiration: Some(1_900_000_000),
            }),
            Request::Decrypt { ciphertext: vec![9; 100], encryption_context: [("a".to_string(), "b".to_string())].into(), key_id: None },
            Request::GenerateDataKey {
                key_id: "alias/x".into(),
                key_spec: Some("AES_256".into()),
                number_of_bytes: None,
                encryption_context: BTreeMap::new(),
            },
            Request::GenerateRandom { length: 32 },
        ];
        for (id, r) in requests.into_iter().enumerate() {
            let frame = encode(&ClientFrame::Call { id: id as u64, request: request_to_value(&r) });
            let ClientFrame::Call { id: back, request } = decode::<ClientFrame>(&frame).unwrap() else { panic!("not a call") };
            assert_eq!(back, id as u64);
            assert_eq!(request_from_value(request).unwrap(), r);
        }
    }

    #[test]
    fn a_call_written_directly_is_the_call_written_through_a_value() {
        let r = Request::Decrypt {
            ciphertext: vec![9; 100],
            encryption_context: [("a".to_string(), "b".to_string())].into(),
            key_id: Some("k".into()),
        };
        let direct = encode(&CallRef::Call { id: 300, request: &r });
        assert_eq!(direct, encode(&ClientFrame::Call { id: 300, request: request_to_value(&r) }));
        assert!(matches!(decode_incoming(&direct), Incoming::Known { id: 300, request } if request == r));
        let unknown = ciborium::Value::Map(vec![(ciborium::Value::Text("Frobnicate".into()), ciborium::Value::Integer(1.into()))]);
        let frame = encode(&ClientFrame::Call { id: 8, request: unknown });
        assert!(matches!(decode_incoming(&frame), Incoming::Other(Ok(ClientFrame::Call { id: 8, .. }))));
    }

    #[test]
    fn a_secret_frame_encodes_as_any_other() {
        let r = Request::P11(P11Request::Login { handle: Secret::new(vec![7; 32]), pin: SecretString::new("1234-secret") });
        let big = Request::Decrypt { ciphertext: vec![9; 5000], encryption_context: BTreeMap::new(), key_id: None };
        for request in [r, big] {
            assert_eq!(
                &encode_secret(&CallRef::Call { id: 3, request: &request })[..],
                &encode(&CallRef::Call { id: 3, request: &request })[..]
            );
        }
    }

    #[test]
    fn bytes_travel_as_cbor_byte_strings_not_arrays() {
        let frame = encode(&Request::GenerateRandom { length: 1 });
        assert!(frame.len() < 32);
        let r = Response::Random { bytes: Secret::new(vec![0xAB; 1000]) };
        assert!(encode(&r).len() < 1030, "{}", encode(&r).len());
    }

    #[test]
    fn an_unknown_operation_is_a_bad_request_not_a_broken_frame() {
        let value = ciborium::Value::Map(vec![(ciborium::Value::Text("Frobnicate".into()), ciborium::Value::Integer(1.into()))]);
        let frame = encode(&ClientFrame::Call { id: 7, request: value });
        let ClientFrame::Call { id, request } = decode::<ClientFrame>(&frame).unwrap() else { panic!() };
        assert_eq!(id, 7);
        let e = request_from_value(request).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("Frobnicate"), "{}", e.message);
    }

    #[test]
    fn trailing_bytes_and_deep_nesting_are_refused() {
        let mut frame = encode(&ClientFrame::Hello(Hello { protocol: PROTOCOL.into(), versions: vec![1], agent: "t".into() }));
        frame.push(0);
        assert!(decode::<ClientFrame>(&frame).is_err());
        let deep = vec![0x81u8; 100_000];
        assert!(decode::<ClientFrame>(&deep).is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let u = CredentialsUpdate {
            access_key_id: "AKIA".into(),
            secret_access_key: SecretString::new("wJalrXUtnFEMI"),
            session_token: Some(SecretString::new("FwoGZXIvYXdz")),
            region: None,
            expiration: None,
        };
        let shown = format!("{u:?} {:?}", Response::Decrypted { plaintext: Secret::new(b"Hello, KMS!".to_vec()) });
        assert!(!shown.contains("wJalr") && !shown.contains("FwoG") && !shown.contains("Hello"), "{shown}");
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        assert_eq!(negotiate(&[1, 2, 3]), Some(1));
        assert_eq!(negotiate(&[2]), None);
        assert_eq!(negotiate(&[]), None);
    }
}

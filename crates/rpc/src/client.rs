//! Calling the enclave: one connection, any number of calls in flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use nekms_protocol::{KeyRecord, Payload, Scheme, Signature};
use nekms_transport::{Address, FrameCodec};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;

use crate::protocol::{
    self, ClientFrame, CredentialsInfo, CredentialsUpdate, Description, ErrorCode, GenerateKey, Hello, ImportKey, Request, Response,
    RpcError, Secret, ServerFrame, PROTOCOL, VERSIONS,
};
use crate::wire::{write_frames, zeroized_after, Outgoing};

/// Why a call did not get an answer from the enclave's handler.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the enclave at {address}: {message}")]
    Connect { address: String, message: String },
    #[error("the enclave refused the handshake: {0}")]
    Handshake(String),
    #[error("the connection to the enclave closed: {0}")]
    Closed(String),
    #[error("the request is {len} bytes; the enclave accepts at most {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the enclave answered {operation} with an unexpected reply")]
    Unexpected { operation: &'static str },
    /// The caller's deadline passed first (a stopped or overloaded enclave); worth retrying.
    #[error("the enclave did not answer within {} s; retry", .0.as_secs())]
    Deadline(std::time::Duration),
    /// The enclave's answer; shown once (it is not also reported as a source).
    #[error("{0}")]
    Remote(RpcError),
}

impl From<RpcError> for ClientError {
    fn from(e: RpcError) -> ClientError {
        ClientError::Remote(e)
    }
}

impl ClientError {
    /// The error reply, when the enclave gave one.
    pub fn remote(&self) -> Option<&RpcError> {
        match self {
            ClientError::Remote(e) => Some(e),
            _ => None,
        }
    }
}

type Pending = Arc<Mutex<PendingCalls>>;

#[derive(Default)]
struct PendingCalls {
    waiting: HashMap<u64, oneshot::Sender<Result<Response, RpcError>>>,
    /// Set once the connection is gone; later calls fail with it.
    closed: Option<String>,
}

/// A connection to the enclave's RPC. Cheap to clone; clones share the
/// connection and may call concurrently.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Outgoing>,
    pending: Pending,
    next_id: AtomicU64,
    version: u16,
    server_agent: String,
    max_frame: usize,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connect and shake hands; `agent` names the caller (`nekms 0.1.0`).
    pub async fn connect(address: &Address, agent: &str) -> Result<Client, ClientError> {
        let connect_error = |message: String| ClientError::Connect { address: address.to_string(), message };
        let stream = tokio::time::timeout(Duration::from_secs(10), nekms_transport::connect(address))
            .await
            .map_err(|_| connect_error("timed out after 10 s".into()))?
            .map_err(|e| connect_error(e.to_string()))?;
        let (read, write) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel::<Outgoing>(256);
        tokio::spawn(write_frames(write, rx));
        let hello = ClientFrame::Hello(Hello { protocol: PROTOCOL.into(), versions: VERSIONS.to_vec(), agent: agent.into() });
        tx.send(Outgoing::new(protocol::encode(&hello))).await.map_err(|_| ClientError::Handshake("the connection closed".into()))?;

        let mut frames = FramedRead::new(read, FrameCodec::new(16 << 20));
        let first = tokio::time::timeout(Duration::from_secs(10), frames.next())
            .await
            .map_err(|_| ClientError::Handshake("no Welcome within 10 s".into()))?;
        let (version, server_agent, max_frame) = match first {
            None => return Err(ClientError::Handshake("the enclave closed the connection".into())),
            Some(Err(e)) => return Err(ClientError::Handshake(e.to_string())),
            Some(Ok(frame)) => match protocol::decode::<ServerFrame>(&frame) {
                Ok(ServerFrame::Welcome { version, agent, max_frame, .. }) if VERSIONS.contains(&version) => {
                    (version, agent, max_frame as usize)
                }
                Ok(ServerFrame::Welcome { version, .. }) => {
                    return Err(ClientError::Handshake(format!("the enclave chose version {version}, which was not offered")))
                }
                Ok(ServerFrame::Goodbye { message }) => return Err(ClientError::Handshake(message)),
                Ok(ServerFrame::Reply { .. }) => return Err(ClientError::Handshake("a Reply before Welcome".into())),
                Err(e) => return Err(ClientError::Handshake(e.to_string())),
            },
        };

        let pending: Pending = Arc::default();
        let reader = tokio::spawn(read_replies(frames, pending.clone()));
        Ok(Client { inner: Arc::new(Inner { tx, pending, next_id: AtomicU64::new(1), version, server_agent, max_frame, reader }) })
    }

    /// The protocol version agreed in the handshake.
    pub fn version(&self) -> u16 {
        self.inner.version
    }

    /// What the enclave called itself in the handshake.
    pub fn server_agent(&self) -> &str {
        &self.inner.server_agent
    }

    /// Send one request and wait for its reply.
    pub async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(id, Outgoing::new(protocol::encode(&protocol::CallRef::Call { id, request }))).await
    }

    /// Send a request given as a raw CBOR value (for requests this build does not know).
    pub async fn call_value(&self, request: ciborium::Value) -> Result<Response, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(id, Outgoing::new(protocol::encode(&ClientFrame::Call { id, request }))).await
    }

    async fn send(&self, id: u64, body: Outgoing) -> Result<Response, ClientError> {
        if body.len() > self.inner.max_frame {
            return Err(ClientError::TooLarge { len: body.len(), max: self.inner.max_frame });
        }
        let (done, answer) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(reason) = &pending.closed {
                return Err(ClientError::Closed(reason.clone()));
            }
            pending.waiting.insert(id, done);
        }
        let _forget = Forget { pending: &self.inner.pending, id };
        if self.inner.tx.send(body).await.is_err() {
            return Err(ClientError::Closed("the connection is no longer writable".into()));
        }
        match answer.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(ClientError::Remote(e)),
            Err(_) => {
                let reason = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()).closed.clone();
                Err(ClientError::Closed(reason.unwrap_or_else(|| "the connection closed".into())))
            }
        }
    }

    pub async fn describe(&self) -> Result<Description, ClientError> {
        match self.call(&Request::Describe).await? {
            Response::Described(d) => Ok(*d),
            _ => Err(ClientError::Unexpected { operation: "Describe" }),
        }
    }

    pub async fn attest(
        &self,
        nonce: Option<Vec<u8>>,
        user_data: Option<Vec<u8>>,
        public_key: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, ClientError> {
        match self.call(&Request::Attest { nonce, user_data, public_key }).await? {
            Response::Attested { document } => Ok(document),
            _ => Err(ClientError::Unexpected { operation: "Attest" }),
        }
    }

    pub async fn set_credentials(&self, update: CredentialsUpdate) -> Result<CredentialsInfo, ClientError> {
        match self.call(&Request::SetCredentials(update)).await? {
            Response::CredentialsSet(info) => Ok(info),
            _ => Err(ClientError::Unexpected { operation: "SetCredentials" }),
        }
    }

    pub async fn decrypt(
        &self,
        ciphertext: Vec<u8>,
        encryption_context: BTreeMap<String, String>,
        key_id: Option<String>,
    ) -> Result<Secret, ClientError> {
        match self.call(&Request::Decrypt { ciphertext, encryption_context, key_id }).await? {
            Response::Decrypted { plaintext } => Ok(plaintext),
            _ => Err(ClientError::Unexpected { operation: "Decrypt" }),
        }
    }

    /// Returns (key id, ciphertext blob, plaintext).
    pub async fn generate_data_key(
        &self,
        key_id: String,
        key_spec: Option<String>,
        number_of_bytes: Option<u32>,
        encryption_context: BTreeMap<String, String>,
    ) -> Result<(String, Vec<u8>, Secret), ClientError> {
        match self.call(&Request::GenerateDataKey { key_id, key_spec, number_of_bytes, encryption_context }).await? {
            Response::DataKey { key_id, ciphertext_blob, plaintext } => Ok((key_id, ciphertext_blob, plaintext)),
            _ => Err(ClientError::Unexpected { operation: "GenerateDataKey" }),
        }
    }

    pub async fn generate_random(&self, length: u32) -> Result<Secret, ClientError> {
        match self.call(&Request::GenerateRandom { length }).await? {
            Response::Random { bytes } => Ok(bytes),
            _ => Err(ClientError::Unexpected { operation: "GenerateRandom" }),
        }
    }

    pub async fn generate_key(&self, request: GenerateKey) -> Result<KeyRecord, ClientError> {
        match self.call(&Request::GenerateKey(request)).await? {
            Response::KeyCreated { record } => Ok(*record),
            _ => Err(ClientError::Unexpected { operation: "GenerateKey" }),
        }
    }

    pub async fn import_key(&self, request: ImportKey) -> Result<KeyRecord, ClientError> {
        match self.call(&Request::ImportKey(request)).await? {
            Response::KeyCreated { record } => Ok(*record),
            _ => Err(ClientError::Unexpected { operation: "ImportKey" }),
        }
    }

    /// A validator signer call.
    pub async fn privval(&self, request: crate::PrivvalRequest) -> Result<crate::PrivvalResponse, ClientError> {
        match self.call(&Request::Privval(request)).await? {
            Response::Privval(r) => Ok(r),
            _ => Err(ClientError::Unexpected { operation: "Privval" }),
        }
    }

    /// The record is sent first without its origin document, which is most
    /// of its size: an enclave that has this exact record opened (and so
    /// checked) signs from its cache. One that has not answers that the
    /// document is missing, and the record goes again, whole.
    pub async fn sign(&self, record: KeyRecord, scheme: Option<Scheme>, payload: Payload) -> Result<Signature, ClientError> {
        match self.with_record(record, |record| Request::Sign { record, scheme, payload }).await? {
            Response::Signed(signature) => Ok(signature),
            _ => Err(ClientError::Unexpected { operation: "Sign" }),
        }
    }

    /// RSAES-OAEP decryption with a record's key made to decrypt; the record
    /// travels as for [`Client::sign`].
    pub async fn key_decrypt(&self, record: KeyRecord, hash: nekms_protocol::OaepHash, ciphertext: &[u8]) -> Result<Secret, ClientError> {
        match self.with_record(record, |record| Request::KeyDecrypt { record, hash, ciphertext: ciphertext.to_vec() }).await? {
            Response::Decrypted { plaintext } => Ok(plaintext),
            _ => Err(ClientError::Unexpected { operation: "KeyDecrypt" }),
        }
    }

    /// Whether the enclave opens `record` (every rule Sign applies); the
    /// record travels as for [`Client::sign`].
    pub async fn check_record(&self, record: KeyRecord) -> Result<(), ClientError> {
        match self.with_record(record, |record| Request::CheckRecord { record }).await? {
            Response::RecordChecked => Ok(()),
            _ => Err(ClientError::Unexpected { operation: "CheckRecord" }),
        }
    }

    /// Call `request` with the record less its origin document, and again
    /// with it when the enclave has not yet checked this record.
    async fn with_record(&self, mut record: KeyRecord, request: impl FnOnce(KeyRecord) -> Request) -> Result<Response, ClientError> {
        let document = record.attestation.take();
        let mut request = request(record);
        let outcome = self.call(&request).await;
        let missing = matches!(&outcome, Err(e) if e.remote().is_some_and(|r| r.code == ErrorCode::RecordRejected && r.message.contains(nekms_protocol::record::ORIGIN_MISSING)));
        match (missing, document, &mut request) {
            (true, Some(doc), Request::Sign { record, .. } | Request::KeyDecrypt { record, .. } | Request::CheckRecord { record }) => {
                record.attestation = Some(doc);
                self.call(&request).await
            }
            _ => outcome,
        }
    }
}

/// Removes a call's slot if its future is dropped before the reply arrives.
struct Forget<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).waiting.remove(&self.id);
    }
}

async fn read_replies<R: tokio::io::AsyncRead + Unpin>(mut frames: FramedRead<R, FrameCodec>, pending: Pending) {
    let reason = loop {
        let frame = match frames.next().await {
            None => break "the enclave closed the connection".to_string(),
            Some(Err(e)) => break e.to_string(),
            Some(Ok(frame)) => frame,
        };
        match zeroized_after(frame, protocol::decode::<ServerFrame>) {
            Ok(ServerFrame::Reply { id, outcome }) => {
                let waiter = pending.lock().unwrap_or_else(|p| p.into_inner()).waiting.remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(outcome);
                }
            }
            Ok(ServerFrame::Goodbye { message }) => break format!("the enclave said goodbye: {message}"),
            Ok(ServerFrame::Welcome { .. }) => break "a second Welcome".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
    pending.closed = Some(reason);
    pending.waiting.clear();
}

//! Where the states are kept: the anchor when configured, else the parent's
//! state store, dialled by the enclave.

use std::time::Duration;

use nekms_privval::record::StateRecord;
use nekms_privval::state::LastSigned;
use nekms_privval::store::{StoreReply, StoreRequest};
use nekms_rpc::RpcError;
use nekms_transport::Address;

use super::framed;
use super::sign::consensus_sign;
use super::{Chain, Signer, State};
use crate::Enclave;

/// How long the store may take to acknowledge a record.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a commit did not happen.
pub(super) enum CommitError {
    /// The anchor holds a newer state than this enclave knew (another signer's).
    Moved,
    Failed(String),
}

impl Signer {
    /// A state record's candidates by name: the anchor's item, else what the
    /// parent's store holds (up to two slots). Empty: no state.
    pub(super) async fn read(&self, name: &str) -> Result<Vec<Vec<u8>>, RpcError> {
        match &self.anchor {
            Some(a) => Ok(a.get(name).await.map_err(unavailable)?.into_iter().collect()),
            None => match self.store.call(StoreRequest::Get { name: name.to_owned() }).await.map_err(unavailable)? {
                StoreReply::Found(b) => Ok(vec![b]),
                StoreReply::Slots(records) => Ok(records),
                StoreReply::None => Ok(Vec::new()),
                StoreReply::Failed(why) => Err(unavailable(format!("the state store: {why}"))),
                StoreReply::Stored => Err(unavailable("the state store answered a read with an acknowledgement")),
            },
        }
    }

    /// Write a chain's first record; refused if one exists.
    pub(super) async fn create(&self, name: &str, record: Vec<u8>) -> Result<(), RpcError> {
        let exists = || RpcError::refused(format!("rule privval-state: a state for {name} exists already; it is not overwritten"));
        match &self.anchor {
            Some(a) => match a.create(name, 1, record).await.map_err(unavailable)? {
                true => Ok(()),
                false => Err(exists()),
            },
            None => {
                if !self.read(name).await?.is_empty() {
                    return Err(exists());
                }
                match self.store.call(StoreRequest::Put { name: name.to_owned(), record }).await.map_err(unavailable)? {
                    StoreReply::Stored => Ok(()),
                    other => Err(unavailable(format!("the state store did not store the record: {other:?}"))),
                }
            }
        }
    }
}

/// The parent's state process, dialled by the enclave; one request at a time.
pub(super) struct StateStore {
    address: Option<Address>,
    conn: tokio::sync::Mutex<Option<framed::Framed>>,
}

impl StateStore {
    pub(super) fn new(address: Option<Address>) -> StateStore {
        StateStore { address, conn: tokio::sync::Mutex::new(None) }
    }

    async fn call(&self, request: StoreRequest) -> Result<StoreReply, String> {
        let Some(address) = &self.address else {
            return Err("no state store is configured (nekms-enclave --privval-state ADDR)".into());
        };
        let mut conn = self.conn.lock().await;
        let body = request.encode();
        // One retry on a fresh connection: the store may have restarted.
        for attempt in 0..2 {
            if conn.is_none() {
                match tokio::time::timeout(STORE_TIMEOUT, nekms_transport::connect(address)).await {
                    Ok(Ok(stream)) => *conn = Some(framed::Framed { stream, buf: Vec::new() }),
                    Ok(Err(e)) => return Err(format!("the state store: {e}")),
                    Err(_) => return Err(format!("the state store at {address} did not answer in {STORE_TIMEOUT:?}")),
                }
            }
            let framed = conn.as_mut().expect("connected");
            let exchange = async {
                framed.send(&body).await?;
                framed.recv(nekms_privval::store::MAX_RECORD + 16).await
            };
            match tokio::time::timeout(STORE_TIMEOUT, exchange).await {
                Ok(Ok(reply)) => return StoreReply::decode(&reply).map_err(|e| e.to_string()),
                Ok(Err(e)) => {
                    *conn = None;
                    if attempt == 1 {
                        return Err(format!("the state store: {e}"));
                    }
                }
                Err(_) => {
                    *conn = None;
                    return Err(format!("the state store did not acknowledge in {STORE_TIMEOUT:?}"));
                }
            }
        }
        unreachable!("the loop returns")
    }
}

impl Enclave {
    /// Commit the state's newest record if the store (or the anchor) has not acknowledged it.
    pub(super) async fn commit(&self, c: &Chain, st: &mut State) -> Result<(), CommitError> {
        if st.committed >= st.counter {
            return Ok(());
        }
        let record = StateRecord {
            key_id: c.fingerprint.clone(),
            chain_id: c.chain_id.clone(),
            counter: st.counter,
            last: LastSigned { signature: None, ..st.last.clone() },
        };
        let name = nekms_privval::store::name(&c.fingerprint, &c.chain_id);
        if let Some(anchor) = &self.privval.anchor {
            return match anchor.update(&name, st.committed, st.counter, record.seal(&st.mac)).await {
                Ok(crate::privval_anchor::Written::Done) => {
                    st.committed = st.counter;
                    Ok(())
                }
                Ok(crate::privval_anchor::Written::Moved) => Err(CommitError::Moved),
                Err(e) => Err(CommitError::Failed(e)),
            };
        }
        match self.privval.store.call(StoreRequest::Put { name, record: record.seal(&st.mac) }).await {
            Ok(StoreReply::Stored) => {
                st.committed = st.counter;
                Ok(())
            }
            Ok(other) => Err(CommitError::Failed(format!("the state store did not acknowledge the new state: {other:?}"))),
            Err(e) => Err(CommitError::Failed(e)),
        }
    }

    /// After a conditional write lost: take the anchor's newer state as this
    /// enclave's (what this enclave signed and did not release is dropped).
    pub(super) async fn adopt_anchor(&self, c: &Chain, st: &mut State) -> Result<(), String> {
        let name = nekms_privval::store::name(&c.fingerprint, &c.chain_id);
        let anchor = self.privval.anchor.as_ref().expect("anchored");
        let bytes = anchor.get(&name).await?.ok_or("the anchor's item is gone")?;
        let record = StateRecord::open(&bytes, &st.mac, &c.fingerprint, &c.chain_id).map_err(|e| format!("the anchor's record: {e}"))?;
        if record.counter < st.committed {
            return Err(format!(
                "the anchor's record ({}) is older than the state this enclave committed ({}): refusing it; someone with write access to the table rolled it back",
                record.counter, st.committed
            ));
        }
        let mut last = record.last;
        if let Some(b) = &last.sign_bytes {
            last.signature = Some(consensus_sign(&c.key, b)?);
        }
        st.last = last;
        st.counter = record.counter;
        st.committed = record.counter;
        Ok(())
    }
}

fn unavailable(message: impl Into<String>) -> RpcError {
    RpcError::new(nekms_rpc::ErrorCode::Unavailable, message)
}

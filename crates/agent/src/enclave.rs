//! The agent's one connection to the enclave's RPC, shared by every request.

use nekms_rpc::{Client, ClientError};
use nekms_transport::Address;

/// One connection to the enclave, shared, reopened after it breaks.
pub(crate) struct EnclaveConn {
    address: Address,
    client: tokio::sync::Mutex<Option<Client>>,
    /// The longest a call may take, connecting included.
    deadline: std::time::Duration,
}

impl EnclaveConn {
    /// Nothing is dialled until the first call.
    pub(crate) fn new(address: Address, deadline: std::time::Duration) -> EnclaveConn {
        EnclaveConn { address, client: tokio::sync::Mutex::new(None), deadline }
    }

    async fn client(&self) -> Result<Client, ClientError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = Client::connect(&self.address, concat!("nekms-agent ", env!("CARGO_PKG_VERSION"))).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Run `f`; if the connection was broken, reconnect and run it once more. A call that takes
    /// longer than the deadline (a stopped enclave) ends with [`ClientError::Deadline`], and the
    /// next call dials again.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        match tokio::time::timeout(self.deadline, self.call_once(f)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                *self.client.lock().await = None;
                Err(ClientError::Deadline(self.deadline))
            }
        }
    }

    async fn call_once<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let first = f(self.client().await?).await;
        match first {
            Err(ClientError::Closed(_)) => {
                *self.client.lock().await = None;
                f(self.client().await?).await
            }
            other => other,
        }
    }
}

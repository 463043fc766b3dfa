//! Where the enclave and the key store are. Operations reach them only
//! when they get there, after the token database's own checks, so a refused
//! request touches neither.

use anyhow::{bail, Context};
use nekms_rpc::{Client, P11Request, P11Response, Request, Response};
use nekms_store::{Store, StoreUrl};
use nekms_transport::Address;

/// The enclave's RPC.
#[derive(Clone, Debug)]
pub struct Enclave {
    address: Address,
}

impl Enclave {
    pub fn new(address: Address) -> Enclave {
        Enclave { address }
    }

    /// A connection, hands shaken.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        nekms_parent::enclave::connect(&self.address).await
    }

    /// One PKCS#11 call on a connection of its own.
    pub async fn p11(&self, request: P11Request) -> anyhow::Result<P11Response> {
        match self.connect().await?.call(&Request::P11(request)).await? {
            Response::P11(r) => Ok(r),
            other => unexpected(other),
        }
    }
}

/// The error for an answer that is not the one the request calls for.
pub(crate) fn unexpected<T>(answer: impl std::fmt::Debug) -> anyhow::Result<T> {
    bail!("the enclave answered {answer:?}")
}

/// The key store: a URL and, for DynamoDB, an endpoint other than the SDK's.
#[derive(Clone, Debug)]
pub struct KeyStoreLocation {
    pub url: StoreUrl,
    pub endpoint: Option<String>,
}

impl KeyStoreLocation {
    pub fn new(url: StoreUrl, endpoint: Option<String>) -> KeyStoreLocation {
        KeyStoreLocation { url, endpoint }
    }

    pub async fn open(&self) -> anyhow::Result<Store> {
        Store::open(&self.url, self.endpoint.as_deref()).await.with_context(|| format!("opening {}", self.url))
    }
}

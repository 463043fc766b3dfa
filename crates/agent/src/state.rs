//! What the agent holds while it serves: the enclave's connection, the
//! store, the callers, a few seconds of records and its counters. No secret:
//! records are sealed, and the tokens are kept as digests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nekms_keys::KeyRecord;
use nekms_store::Store;
use nekms_transport::Address;

use crate::access::Access;
use crate::enclave::EnclaveConn;
use crate::metrics::Metrics;

pub(crate) struct AppState {
    pub(crate) enclave: EnclaveConn,
    pub(crate) store: Store,
    pub(crate) access: Access,
    /// Records read for signing, and when (see `routes::sign`).
    pub(crate) records: Mutex<HashMap<String, (Arc<KeyRecord>, Instant)>>,
    pub(crate) metrics: Metrics,
    /// Secrets Manager's endpoint (moto) instead of the SDK's.
    pub(crate) secrets_endpoint: Option<String>,
}

pub(crate) type Shared = Arc<AppState>;

impl AppState {
    pub(crate) fn new(enclave: Address, store: Store, access: Access, secrets_endpoint: Option<String>) -> Shared {
        Arc::new(AppState {
            enclave: EnclaveConn::new(enclave),
            store,
            access,
            records: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            secrets_endpoint,
        })
    }
}

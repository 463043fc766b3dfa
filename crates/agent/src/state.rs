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
    /// The KMS API's key metadata read for signing, and when (the same TTL).
    pub(crate) metas: Mutex<HashMap<String, (nekms_store::meta::KeyMeta, Instant)>>,
    pub(crate) metrics: Metrics,
    /// Secrets Manager's endpoint (moto) instead of the SDK's.
    pub(crate) secrets_endpoint: Option<String>,
    pub(crate) limits: crate::listen::Limits,
    /// The last health check: when, its status and body.
    pub(crate) health: tokio::sync::Mutex<Option<(Instant, axum::http::StatusCode, serde_json::Value)>>,
    /// Requests in progress, per caller (at most `limits.max_per_caller` each).
    pub(crate) in_flight: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Digests of records the enclave opened, and when: their public keys
    /// are the sealed keys' (see [`AppState::opened`]).
    pub(crate) opened: Mutex<HashMap<[u8; 32], Instant>>,
}

pub(crate) type Shared = Arc<AppState>;

/// How long the enclave's opening of a record vouches for its public key here.
pub(crate) const OPENED_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// How long a record read for signing is used before it is read again.
pub(crate) const RECORD_TTL: std::time::Duration = std::time::Duration::from_secs(5);

impl AppState {
    pub(crate) fn new(
        enclave: Address,
        store: Store,
        access: Access,
        secrets_endpoint: Option<String>,
        limits: crate::listen::Limits,
    ) -> Shared {
        Arc::new(AppState {
            enclave: EnclaveConn::new(enclave, limits.enclave_deadline),
            store,
            access,
            records: Mutex::new(HashMap::new()),
            metas: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            secrets_endpoint,
            limits,
            health: tokio::sync::Mutex::new(None),
            in_flight: Mutex::new(HashMap::new()),
            opened: Mutex::new(HashMap::new()),
        })
    }

    /// Refused unless the enclave opens `record` (every rule Sign applies,
    /// its public key checked against its sealed key); remembered by the
    /// record's digest for [`OPENED_TTL`]. Whoever can write the store (root,
    /// or anyone with the instance role's DynamoDB rights) could otherwise
    /// put a public key of its own in a record and have this agent hand it
    /// out, verify signatures with it and encrypt callers' data to it.
    pub(crate) async fn opened(&self, record: &KeyRecord) -> Result<(), nekms_rpc::ClientError> {
        use nekms_keys::RecordExt;
        let digest = record.cache_digest();
        if self.opened.lock().unwrap_or_else(|p| p.into_inner()).get(&digest).is_some_and(|at| at.elapsed() < OPENED_TTL) {
            return Ok(());
        }
        self.enclave
            .call(|c| {
                let r = record.clone();
                async move { c.check_record(r).await }
            })
            .await?;
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if opened.len() >= 4096 {
            opened.retain(|_, at| at.elapsed() < OPENED_TTL);
        }
        if opened.len() < 4096 {
            opened.insert(digest, Instant::now());
        }
        Ok(())
    }

    /// The record `name` for signing, from a cache of [`RECORD_TTL`] in front
    /// of the store (records are never overwritten, so one read recently is
    /// still the record; a deleted key stops signing within the TTL);
    /// `None` if there is none.
    pub(crate) async fn cached_record(&self, name: &str) -> Result<Option<Arc<KeyRecord>>, nekms_store::StoreError> {
        use nekms_store::KeyStore;
        if let Some((r, at)) = self.records.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            if at.elapsed() < RECORD_TTL {
                return Ok(Some(r.clone()));
            }
        }
        // Whole: the enclave checks the origin document before it opens a record.
        let Some(r) = self.store.get(name).await? else { return Ok(None) };
        let r = Arc::new(r);
        let mut cache = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= 4096 {
            cache.retain(|_, (_, at)| at.elapsed() < RECORD_TTL);
        }
        if cache.len() < 4096 {
            cache.insert(name.to_owned(), (r.clone(), Instant::now()));
        }
        Ok(Some(r))
    }

    /// A place for one more request of `caller`, or `None` when it has as many in progress as it may.
    pub(crate) fn admit(&self, caller: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(caller.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.limits.max_per_caller)))
            .clone();
        sem.try_acquire_owned().ok()
    }
}

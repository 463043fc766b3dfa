//! `nekms privval state init|import`: a chain's first state, written by
//! the enclave (the parent cannot make a record: it has no tag key).

use anyhow::bail;
use nekms_protocol::KeyRecord;
use nekms_rpc::{Client, PrivvalRequest, PrivvalResponse};

/// Where a chain's state starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// The first height the signer may sign; nothing below it, ever.
    Height(i64),
    /// tmkms's state file or CometBFT's `priv_validator_state.json` (its JSON).
    Import(String),
}

/// The first state record as the enclave wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Initialized {
    pub height: i64,
    pub round: i32,
    /// FilePV's numbering: 0 when nothing at `height` was signed yet.
    pub step: u8,
}

/// Ask the enclave to write the first state of `key` on `chain_id`;
/// refused when the store or the enclave already holds one.
pub async fn init(client: &Client, key: KeyRecord, chain_id: &str, start: Start) -> anyhow::Result<Initialized> {
    let (height, import) = match start {
        Start::Height(h) => (Some(h), None),
        Start::Import(json) => (None, Some(json)),
    };
    let request = PrivvalRequest::InitState { key: Box::new(key), chain_id: chain_id.into(), height, import };
    match client.privval(request).await? {
        PrivvalResponse::StateInitialized { height, round, step } => Ok(Initialized { height, round, step }),
        _ => bail!("the enclave answered InitState with something else"),
    }
}

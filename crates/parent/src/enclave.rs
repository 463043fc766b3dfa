//! Reaching the enclave's RPC from the parent.

use anyhow::Context;
use nekms_rpc::Client;
use nekms_transport::Address;

/// The enclave's RPC port on vsock.
pub const RPC_PORT: u32 = 5000;

/// A bare number is a vsock CID on `port`; anything else is an address.
pub fn address_or_cid(s: &str, port: u32) -> anyhow::Result<Address> {
    match s.parse::<u32>() {
        Ok(cid) => Ok(format!("vsock://{cid}:{port}").parse()?),
        Err(_) => s.parse().with_context(|| format!("{s}: not a CID or an address")),
    }
}

/// Connect to the enclave's RPC and shake hands.
pub async fn connect(address: &Address) -> anyhow::Result<Client> {
    Ok(Client::connect(address, concat!("nekms ", env!("CARGO_PKG_VERSION"))).await?)
}

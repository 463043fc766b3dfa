//! What the agent is told at start: where to listen, the enclave, the store,
//! the callers, and what it relays. `nekms agent` fills it from its flags.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use nekms_store::Store;
use nekms_transport::Address;

use crate::access::Access;

/// Everything [`crate::serve`] needs.
pub struct AgentConfig {
    /// Loopback TCP or a Unix socket.
    pub listen: Listen,
    /// The permissions given to the Unix socket (`0o600`: its owner only);
    /// unused over TCP.
    pub socket_mode: u32,
    /// The enclave's RPC.
    pub enclave: Address,
    /// Where key records are kept, opened.
    pub store: Store,
    /// The callers, and the keys each may use.
    pub access: Access,
    /// Push the instance's AWS credentials to the enclave and keep them
    /// fresh; `None` when something else does.
    pub credentials: Option<CredentialsRelay>,
    /// Secrets Manager's endpoint (moto) instead of the SDK's, for imports
    /// by `secret_id`.
    pub secrets_endpoint: Option<String>,
    /// Write `{"url": ...}` here once listening.
    pub ready_file: Option<PathBuf>,
    /// The store as the start-up line names it (`sqlite:/var/lib/nekms/keys.db`).
    pub store_name: String,
    /// The enclave as the start-up line names it: as the operator gave it
    /// (a CID such as `16`, or an address).
    pub enclave_name: String,
    /// Timeouts and caps ([`crate::Limits`]).
    pub limits: crate::Limits,
    /// AWS KMS's API for the same keys, on a listener of its own ([`crate::KmsApi`]).
    pub kms_api: Option<crate::KmsApi>,
}

/// Where the agent listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// TCP on a loopback address (port 0: any free one). Callers send a
    /// bearer token and a loopback `Host`.
    Tcp(LoopbackAddr),
    /// A Unix socket at this path (one already there is replaced). Callers
    /// are also known by their uid.
    Unix(PathBuf),
}

/// A socket address on a loopback IP (127.0.0.0/8 or ::1): the only TCP the
/// agent listens on, so nothing off the instance reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopbackAddr(SocketAddr);

impl LoopbackAddr {
    pub fn new(addr: SocketAddr) -> Result<LoopbackAddr, NotLoopback> {
        if !addr.ip().is_loopback() {
            return Err(NotLoopback(addr.ip()));
        }
        Ok(LoopbackAddr(addr))
    }

    pub fn get(self) -> SocketAddr {
        self.0
    }
}

/// An address the agent refuses to listen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotLoopback(pub IpAddr);

impl fmt::Display for NotLoopback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the agent listens on loopback only (127.0.0.1 or ::1), not {}", self.0)
    }
}

impl std::error::Error for NotLoopback {}

/// The instance's AWS credentials, pushed to the enclave at start and again
/// before they expire.
#[derive(Clone, Debug)]
pub struct CredentialsRelay {
    /// The AWS profile to read them from; `None`: the SDK's default chain.
    pub profile: Option<String>,
    /// Time between pushes (they are also pushed 5 minutes before expiry).
    pub interval: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_listened_on() {
        for ok in ["127.0.0.1:8080", "127.0.0.2:0", "[::1]:8080"] {
            assert!(LoopbackAddr::new(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in ["0.0.0.0:8080", "10.0.0.1:8080", "[::]:8080", "[::ffff:127.0.0.1]:8080"] {
            assert!(LoopbackAddr::new(bad.parse().unwrap()).is_err(), "{bad}");
        }
        let e = LoopbackAddr::new("10.0.0.1:8080".parse().unwrap()).unwrap_err();
        assert_eq!(e.to_string(), "the agent listens on loopback only (127.0.0.1 or ::1), not 10.0.0.1");
    }
}

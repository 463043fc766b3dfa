//! The one address type: `vsock://CID:PORT`, `unix:///path`, `tcp://IP:PORT`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

/// A vsock context identifier.
///
/// The well-known names are accepted wherever a CID is: `any` (bind on every
/// CID, `VMADDR_CID_ANY`), `host` (CID 2, the hypervisor) and `parent` (CID 3,
/// the parent instance as seen from inside an enclave).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VsockCid(pub u32);

impl VsockCid {
    /// `VMADDR_CID_ANY`: listen on every CID this machine answers to.
    pub const ANY: VsockCid = VsockCid(u32::MAX);
    /// `VMADDR_CID_HOST`.
    pub const HOST: VsockCid = VsockCid(2);
    /// The parent instance, from inside a Nitro Enclave.
    pub const PARENT: VsockCid = VsockCid(3);
}

impl fmt::Display for VsockCid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VsockCid::ANY => f.write_str("any"),
            VsockCid::HOST => f.write_str("host"),
            VsockCid::PARENT => f.write_str("parent"),
            VsockCid(n) => write!(f, "{n}"),
        }
    }
}

/// Where to listen or connect.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// AF_VSOCK: the parent/enclave channel in production.
    Vsock { cid: VsockCid, port: u32 },
    /// A Unix domain socket: the development stand-in for vsock.
    Unix(PathBuf),
    /// TCP to a literal IP address (no name resolution).
    Tcp(SocketAddr),
}

/// Why a string is not an [`Address`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address {0:?} has no scheme: write vsock://CID:PORT, unix:///path or tcp://IP:PORT")]
    MissingScheme(String),
    #[error("unknown address scheme {0:?}: expected vsock, unix or tcp")]
    UnknownScheme(String),
    #[error("vsock address {0:?} needs the form vsock://CID:PORT")]
    VsockShape(String),
    #[error("vsock CID {0:?} is neither a number nor one of any, host, parent")]
    VsockCid(String),
    #[error("port {0:?} is not a number in range")]
    Port(String),
    #[error("unix address needs an absolute path, as in unix:///run/nekms.sock; got {0:?}")]
    UnixPath(String),
    #[error("unix socket path is {len} bytes; the limit is {max}")]
    UnixPathTooLong { len: usize, max: usize },
    #[error("tcp address {0:?} is not IP:PORT (names are not resolved; IPv6 as [::1]:PORT)")]
    Tcp(String),
    #[error("tcp port 0 is not a connectable address")]
    TcpPortZero,
}

/// `sun_path` is 108 bytes on Linux, including the terminating NUL.
const UNIX_PATH_MAX: usize = 107;

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| AddressError::MissingScheme(s.to_owned()))?;
        match scheme {
            "vsock" => parse_vsock(rest),
            "unix" => parse_unix(rest),
            "tcp" => parse_tcp(rest),
            other => Err(AddressError::UnknownScheme(other.to_owned())),
        }
    }
}

fn parse_vsock(rest: &str) -> Result<Address, AddressError> {
    let (cid, port) = rest
        .split_once(':')
        .filter(|(c, p)| !c.is_empty() && !p.is_empty())
        .ok_or_else(|| AddressError::VsockShape(format!("vsock://{rest}")))?;
    let cid = match cid {
        "any" => VsockCid::ANY,
        "host" => VsockCid::HOST,
        "parent" => VsockCid::PARENT,
        n => VsockCid(parse_decimal(n).ok_or_else(|| AddressError::VsockCid(n.to_owned()))?),
    };
    let port = parse_decimal(port).ok_or_else(|| AddressError::Port(port.to_owned()))?;
    Ok(Address::Vsock { cid, port })
}

/// Plain decimal digits only: `u32::from_str` would also take `+5`.
fn parse_decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_unix(rest: &str) -> Result<Address, AddressError> {
    if !rest.starts_with('/') || rest.contains('\0') {
        return Err(AddressError::UnixPath(rest.to_owned()));
    }
    if rest.len() > UNIX_PATH_MAX {
        return Err(AddressError::UnixPathTooLong { len: rest.len(), max: UNIX_PATH_MAX });
    }
    Ok(Address::Unix(PathBuf::from(rest)))
}

fn parse_tcp(rest: &str) -> Result<Address, AddressError> {
    let addr: SocketAddr = rest.parse().map_err(|_| AddressError::Tcp(rest.to_owned()))?;
    Ok(Address::Tcp(addr))
}

impl Address {
    /// A loopback TCP address; port 0 asks the OS for a free port when binding.
    pub fn loopback_tcp(port: u16) -> Address {
        Address::Tcp(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port))
    }

    /// The same address with another port (vsock and TCP); Unix addresses are
    /// returned unchanged.
    pub fn with_port(&self, port: u32) -> Result<Address, AddressError> {
        match self {
            Address::Vsock { cid, .. } => Ok(Address::Vsock { cid: *cid, port }),
            Address::Tcp(sa) => {
                let port = u16::try_from(port).map_err(|_| AddressError::Port(port.to_string()))?;
                Ok(Address::Tcp(SocketAddr::new(sa.ip(), port)))
            }
            Address::Unix(p) => Ok(Address::Unix(p.clone())),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Tcp(sa) => write!(f, "tcp://{sa}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_cids_parse_to_their_numbers() {
        for (text, cid) in [("any", u32::MAX), ("host", 2), ("parent", 3), ("16", 16)] {
            let a: Address = format!("vsock://{text}:5000").parse().unwrap();
            assert_eq!(a, Address::Vsock { cid: VsockCid(cid), port: 5000 });
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "vsock://any:5000",
            "vsock://parent:8000",
            "vsock://host:1",
            "vsock://42:3000",
            "unix:///tmp/nekms.sock",
            "tcp://127.0.0.1:8443",
            "tcp://[::1]:80",
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
            assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
        }
    }

    #[test]
    fn malformed_addresses_say_what_is_wrong() {
        let cases: &[(&str, AddressError)] = &[
            ("localhost:80", AddressError::MissingScheme("localhost:80".into())),
            ("http://x", AddressError::UnknownScheme("http".into())),
            ("vsock://3", AddressError::VsockShape("vsock://3".into())),
            ("vsock://:80", AddressError::VsockShape("vsock://:80".into())),
            ("vsock://guest:80", AddressError::VsockCid("guest".into())),
            ("vsock://3:+80", AddressError::Port("+80".into())),
            ("vsock://3:4294967296", AddressError::Port("4294967296".into())),
            ("vsock://-1:80", AddressError::VsockCid("-1".into())),
            ("unix://relative.sock", AddressError::UnixPath("relative.sock".into())),
            ("tcp://localhost:80", AddressError::Tcp("localhost:80".into())),
            ("tcp://127.0.0.1", AddressError::Tcp("127.0.0.1".into())),
        ];
        for (input, want) in cases {
            assert_eq!(&input.parse::<Address>().unwrap_err(), want, "{input}");
        }
        let long = format!("unix:///{}", "a".repeat(200));
        assert!(matches!(long.parse::<Address>(), Err(AddressError::UnixPathTooLong { .. })));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,64}") {
            let _ = s.parse::<Address>();
        }

        #[test]
        fn vsock_numbers_round_trip(cid in 0u32..u32::MAX, port: u32) {
            let a = Address::Vsock { cid: VsockCid(cid), port };
            proptest::prop_assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
        }
    }
}

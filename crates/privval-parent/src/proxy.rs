//! The relay (`nekms privval proxy`): dial each validator's
//! `priv_validator_laddr` and join it to the enclave's signer, reconnecting.
//!
//! Each connection to the signer opens with a hello, one frame of nekms's
//! transport holding JSON (`{"chain_id", "validator", "node_id"}`); the
//! signer answers `ok` (one frame), or says in its frame why not. After
//! that the relay copies bytes both ways and reads none of them: on
//! `tcp://` the SecretConnection runs between the validator and the
//! enclave, and the signer checks the node id the hello names.

use std::time::Duration;

use anyhow::{bail, Context};
use nekms_transport::frame::{read_frame, write_frame};
use nekms_transport::Address;
use tokio::io::AsyncWriteExt;

use crate::config::ValidatorConfig;

/// A validator's `priv_validator_laddr`, as nekms dials it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorAddr {
    pub address: Address,
    /// The node id a `tcp://` address names, lowercase hex.
    pub node_id: Option<String>,
}

/// A validator's address: `unix://PATH`, or `tcp://[NODE_ID@]HOST:PORT`.
pub fn parse_validator_addr(addr: &str) -> anyhow::Result<ValidatorAddr> {
    if let Some(path) = addr.strip_prefix("unix://") {
        return Ok(ValidatorAddr { address: format!("unix://{path}").parse()?, node_id: None });
    }
    let Some(rest) = addr.strip_prefix("tcp://") else {
        bail!("validator address {addr:?}: unix://PATH or tcp://NODE_ID@HOST:PORT");
    };
    let (id, host) = match rest.split_once('@') {
        Some((id, host)) => {
            if id.len() != 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("validator address {addr:?}: a node id is 40 hex digits");
            }
            (Some(id.to_ascii_lowercase()), host)
        }
        None => (None, rest),
    };
    let sa: std::net::SocketAddr = match host.parse() {
        Ok(sa) => sa,
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(host)
            .with_context(|| format!("validator address {addr:?}"))?
            .next()
            .context("no address")?,
    };
    Ok(ValidatorAddr { address: Address::Tcp(sa), node_id: id })
}

#[derive(serde::Serialize)]
struct Hello<'a> {
    chain_id: &'a str,
    validator: &'a str,
    node_id: Option<&'a str>,
}

/// Relay every validator in `validators` to the signer at `enclave`, each
/// reconnecting (unless its `reconnect` is off), until all are done or the
/// process is told to stop (SIGTERM, Ctrl-C).
pub async fn run(enclave: Address, validators: Vec<ValidatorConfig>) -> anyhow::Result<()> {
    if validators.is_empty() {
        bail!("the configuration has no [[validator]]");
    }
    let mut tasks = Vec::new();
    for v in validators {
        let enclave = enclave.clone();
        tasks.push(tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match relay_once(&enclave, &v).await {
                    Ok(()) => {
                        tracing::info!(validator = %v.addr, chain = %v.chain_id, "privval proxy: connection closed");
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => tracing::warn!(validator = %v.addr, chain = %v.chain_id, "privval proxy: {e:#}"),
                }
                if !v.reconnect {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = all(tasks) => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

async fn all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// Dial the validator, open the enclave's signer for its chain, and relay until either side closes.
pub async fn relay_once(enclave: &Address, v: &ValidatorConfig) -> anyhow::Result<()> {
    let ValidatorAddr { address, node_id } = parse_validator_addr(&v.addr)?;
    // The signer first: the validator sees a connection only once the
    // enclave serves its chain.
    let mut signer = nekms_transport::connect(enclave).await?;
    let hello = serde_json::to_vec(&Hello { chain_id: &v.chain_id, validator: &v.addr, node_id: node_id.as_deref() })?;
    write_frame(&mut signer, &hello, u32::MAX as usize).await?;
    let mut buf = Vec::new();
    let answer = read_frame(&mut signer, &mut buf, 4096).await?.context("the enclave closed the connection")?;
    if answer != b"ok" {
        bail!("the enclave: {}", String::from_utf8_lossy(&answer));
    }
    let mut validator = nekms_transport::connect(&address).await?;
    tracing::info!(validator = %v.addr, chain = %v.chain_id, "privval proxy: connected");
    // What the enclave sent after its answer (the start of a SecretConnection
    // handshake) was read with it: the validator gets it first.
    if !buf.is_empty() {
        validator.write_all(&buf).await?;
    }
    // Either side closing ends the relay: a validator must not wait on a
    // signer that went away (it reconnects), nor the reverse.
    let (mut vr, mut vw) = tokio::io::split(validator);
    let (mut sr, mut sw) = tokio::io::split(signer);
    tokio::select! {
        r = tokio::io::copy(&mut vr, &mut sw) => { r?; }
        r = tokio::io::copy(&mut sr, &mut vw) => { r?; }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use nekms_transport::frame::encode;
    use nekms_transport::Listener;
    use tokio::io::AsyncReadExt;

    use super::*;

    const NODE: &str = "0123456789ABCDEF0123456789abcdef01234567";

    #[test]
    fn a_unix_address_is_its_path() {
        let v = parse_validator_addr("unix:///run/validator.sock").unwrap();
        assert_eq!(v.address.to_string(), "unix:///run/validator.sock");
        assert_eq!(v.node_id, None);
    }

    #[test]
    fn a_tcp_address_may_name_the_node_id_which_is_kept_in_lowercase() {
        let v = parse_validator_addr(&format!("tcp://{NODE}@127.0.0.1:26658")).unwrap();
        assert_eq!(v.address, Address::Tcp("127.0.0.1:26658".parse().unwrap()));
        assert_eq!(v.node_id.as_deref(), Some("0123456789abcdef0123456789abcdef01234567"));
        assert_eq!(parse_validator_addr("tcp://[::1]:26658").unwrap().node_id, None);
    }

    #[test]
    fn a_node_id_is_40_hex_digits() {
        for id in ["0123", &format!("{NODE}0"), &NODE.replace('A', "g")] {
            let addr = format!("tcp://{id}@127.0.0.1:26658");
            let e = parse_validator_addr(&addr).unwrap_err();
            assert_eq!(e.to_string(), format!("validator address {addr:?}: a node id is 40 hex digits"));
        }
    }

    #[test]
    fn other_schemes_are_refused() {
        for addr in ["127.0.0.1:26658", "http://127.0.0.1:26658", "vsock://3:26658"] {
            let e = parse_validator_addr(addr).unwrap_err();
            assert_eq!(e.to_string(), format!("validator address {addr:?}: unix://PATH or tcp://NODE_ID@HOST:PORT"));
        }
    }

    async fn listener(dir: &std::path::Path, name: &str) -> Listener {
        Listener::bind(&format!("unix://{}", dir.join(name).display()).parse().unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn the_hello_names_the_chain_and_what_follows_the_ok_reaches_the_validator_first() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, validator) = (listener(dir.path(), "signer.sock").await, listener(dir.path(), "validator.sock").await);
        let v = ValidatorConfig::for_relay("test-chain", &validator.local_address().to_string());
        let enclave = signer.local_address().clone();
        let relay = tokio::spawn(async move { relay_once(&enclave, &v).await });

        let (mut s, _) = signer.accept().await.unwrap();
        let hello = read_frame(&mut s, &mut Vec::new(), 4096).await.unwrap().unwrap();
        let hello: serde_json::Value = serde_json::from_slice(&hello).unwrap();
        assert_eq!(hello["chain_id"], "test-chain");
        assert_eq!(hello["node_id"], serde_json::Value::Null);
        // The answer and the signer's first bytes in one write.
        s.write_all(&[encode(b"ok", 16).unwrap(), b"handshake".to_vec()].concat()).await.unwrap();

        let (mut val, _) = validator.accept().await.unwrap();
        let mut got = [0u8; 9];
        val.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"handshake");
        val.write_all(b"request").await.unwrap();
        let mut got = [0u8; 7];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"request");

        drop(val);
        relay.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_refusal_from_the_signer_is_the_error_and_the_validator_is_not_dialled() {
        let dir = tempfile::tempdir().unwrap();
        let signer = listener(dir.path(), "signer.sock").await;
        let v = ValidatorConfig::for_relay("other-chain", &format!("unix://{}", dir.path().join("absent.sock").display()));
        let enclave = signer.local_address().clone();
        let relay = tokio::spawn(async move { relay_once(&enclave, &v).await });
        let (mut s, _) = signer.accept().await.unwrap();
        read_frame(&mut s, &mut Vec::new(), 4096).await.unwrap().unwrap();
        write_frame(&mut s, b"chain \"other-chain\" is not served", 4096).await.unwrap();
        let e = relay.await.unwrap().unwrap_err();
        assert_eq!(e.to_string(), "the enclave: chain \"other-chain\" is not served");
    }
}

//! `nekms-sc-bridge`: the validator node's end of a privval SecretConnection,
//! for the tests. It listens on TCP as a validator's `priv_validator_laddr`
//! does, runs the handshake with a fixed identity (tendermint-p2p's
//! implementation, not the one nekms uses), then dials the validator
//! emulator's Unix socket and relays plaintext: each privval frame from the
//! emulator goes into the SecretConnection with one write, as Go's
//! `protoio` writer does, and whatever the signer sends comes back out.
//!
//! Usage: nekms-sc-bridge LISTEN_ADDR IDENTITY_SEED_HEX EMULATOR_SOCKET READY_FILE
//! The ready file gets, as JSON, the bridge's node id and port once it
//! listens; after each handshake the signer's node id is appended to
//! READY_FILE.peers. One signer connection at a time, for ever.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;

use sha2::Digest;
use tendermint_p2p::secret_connection::{SecretConnection, Version};

fn node_id(public: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(public)[..20])
}

/// The emulator's next privval frame, whole (prefix and body), read with
/// the privval crate's varint framing; `buf` keeps what follows it.
fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        match nekms_privval::frame::decode(buf, nekms_privval::frame::MAX_REQUEST) {
            Ok(Some((taken, _))) => return Ok(Some(buf.drain(..taken).collect())),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::other(e)),
        }
        let mut chunk = [0u8; 16 * 1024];
        match r.read(&mut chunk)? {
            0 => return Ok(None),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, seed, emulator, ready] = args.as_slice() else {
        anyhow::bail!("usage: nekms-sc-bridge LISTEN_ADDR IDENTITY_SEED_HEX EMULATOR_SOCKET READY_FILE");
    };
    let seed: [u8; 32] = hex::decode(seed)?.try_into().map_err(|_| anyhow::anyhow!("the seed is 32 bytes"))?;
    let identity = ed25519_consensus::SigningKey::from(seed);
    let own_id = node_id(identity.verification_key().as_bytes());
    let listener = TcpListener::bind(listen)?;
    let port = listener.local_addr()?.port();
    std::fs::write(format!("{ready}.tmp"), format!("{{\"node_id\": \"{own_id}\", \"port\": {port}}}"))?;
    std::fs::rename(format!("{ready}.tmp"), ready)?;
    loop {
        let (tcp, _) = listener.accept()?;
        let sc = match SecretConnection::new(tcp, identity.clone(), Version::V0_34) {
            Ok(sc) => sc,
            Err(e) => {
                eprintln!("nekms-sc-bridge: handshake: {e}");
                continue;
            }
        };
        let peer = match sc.remote_pubkey() {
            tendermint_p2p::secret_connection::PublicKey::Ed25519(k) => node_id(k.as_bytes()),
        };
        let mut peers = std::fs::OpenOptions::new().create(true).append(true).open(format!("{ready}.peers"))?;
        writeln!(peers, "{peer}")?;
        let (mut to_signer, mut from_signer) = sc.split()?;
        let emu = UnixStream::connect(emulator)?;
        let mut emu_in = emu.try_clone()?;
        let mut emu_out = emu;
        let back = std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from_signer.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if emu_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = emu_out.shutdown(std::net::Shutdown::Both);
        });
        let mut pending = Vec::new();
        while let Ok(Some(frame)) = read_frame(&mut emu_in, &mut pending) {
            if to_signer.write_all(&frame).is_err() {
                break;
            }
        }
        drop(to_signer);
        let _ = emu_in.shutdown(std::net::Shutdown::Both);
        let _ = back.join();
    }
}

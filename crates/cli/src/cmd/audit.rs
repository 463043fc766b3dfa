//! `nekms audit collect|verify`: the enclave's audit trail on the parent
//! (format: [`nekms_protocol::audit`]). `collect` appends what the enclave
//! streams to a file; `verify` checks the file: each start line's key
//! against its attestation document, the chain of hashes, each
//! checkpoint's and lost-records marker's signature, and (with `--state`)
//! that the file still reaches the last checkpoint an earlier verify saw.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use nekms_attestation::audit_trail;
use nekms_protocol::audit::MAX_LINE;

use super::attest::RootArgs;
use crate::exit::{error, Class};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Take the enclave's audit stream and append it to a file (the enclave dials ADDR, vsock://parent:5102: audit in its configuration)
    Collect(super::collect::CollectArgs),
    /// Check an audit file: documents, chain, signatures, and nothing removed, reordered, edited or cut off
    Verify {
        file: PathBuf,
        #[command(flatten)]
        root: RootArgs,
        /// The PCR0 every start document must carry
        #[arg(long, value_name = "HEX")]
        pcr0: Vec<String>,
        /// Remember the last checkpoint of each trail here, and fail if a later file no longer reaches it
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Collect(super::collect::CollectArgs { listen, out }) => {
            let sink = super::collect::Sink { name: "audit collect", max_line: MAX_LINE, sync: true, echo: false };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?
                .block_on(super::collect::collect(&listen, &out, sink))
        }
        Command::Verify { file, root, pcr0, state } => verify(&file, &root, &pcr0, state.as_deref()),
    }
}

fn verify(file: &std::path::Path, root: &RootArgs, pcr0: &[String], state: Option<&std::path::Path>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    let (verifier, root_name) = root.verifier()?;
    let trails =
        audit_trail::verify(&text, &verifier, pcr0).map_err(|f| error(Class::VerificationFailed, format!("{}: {f}", file.display())))?;
    if let Some(path) = state {
        check_state(path, &trails)?;
    }
    for t in &trails {
        let key = hex::encode(&t.key[..8]);
        match t.last_checkpoint {
            Some((seq, _)) => println!(
                "trail {key} (PCR0 {}...): {} records, chain intact, signed up to seq {seq}; {} after it not signed yet; {} lost by the enclave",
                &t.pcr0[..16.min(t.pcr0.len())],
                t.records,
                t.expected - 1 - seq,
                t.lost
            ),
            None => println!("trail {key}: {} records, chain intact, no checkpoint yet; {} lost by the enclave", t.records, t.lost),
        }
    }
    println!("{}: {} trail(s) verified against {root_name}", file.display(), trails.len());
    Ok(())
}

/// Each trail's last checkpoint seen before must still be in the file; then remember the new ones.
fn check_state(path: &std::path::Path, trails: &[audit_trail::Trail]) -> anyhow::Result<()> {
    let mut seen: BTreeMap<String, (u64, String)> = match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| path.display().to_string())?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(anyhow::Error::new(e).context(path.display().to_string())),
    };
    for (key, (seq, hash)) in &seen {
        let t = trails.iter().find(|t| &hex::encode(&t.key) == key);
        let ok = t.and_then(|t| t.hashes.get(seq)).is_some_and(|h| &hex::encode(h) == hash);
        if !ok {
            return Err(error(
                Class::VerificationFailed,
                format!(
                    "trail {}: checkpoint {seq}, seen by an earlier verify, is no longer in the file: it was cut off or changed",
                    &key[..16]
                ),
            ));
        }
    }
    for t in trails {
        if let Some((seq, hash)) = t.last_checkpoint {
            seen.insert(hex::encode(&t.key), (seq, hex::encode(hash)));
        }
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&seen)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

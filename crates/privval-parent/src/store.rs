//! The state store (`nekms privval persist`): where the enclave's signer
//! commits each new double-sign state before it releases a signature.
//!
//! Two fixed-size slot files per key and chain,
//! `<chain id, escaped>@<fingerprint>.state.0` and `.1`; a new record
//! overwrites the slot of its counter modulo 2, so the newest and the one
//! before are both on disk, and one `fdatasync` (a first write also syncs
//! the file and the directory) makes it durable before the store answers
//! "stored". A read returns both slots; the enclave takes the newest whose
//! tag verifies, so a write torn by a crash (never acknowledged) leaves the
//! record before it. The messages are [`nekms_privval::store`]'s, one frame
//! of nekms's transport each.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use nekms_privval::store::{StoreReply, StoreRequest};
use nekms_transport::frame::{self, read_frame, write_frame};
use nekms_transport::Listener;

/// A name's two slot files: `<chain id, escaped>@<fingerprint>.state.0` and `.1`.
fn file_names(name: &str) -> anyhow::Result<[String; 2]> {
    let (fp, chain) = nekms_privval::store::check_name(name).map_err(anyhow::Error::msg)?;
    let mut escaped = String::new();
    for b in chain.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            escaped.push(b as char);
        } else {
            escaped.push_str(&format!("%{b:02X}"));
        }
    }
    Ok([0, 1].map(|i| format!("{escaped}@{fp}.state.{i}")))
}

/// A slot file: a 4-byte length, the record, zeros to a fixed size, so an
/// overwrite changes no metadata and one fdatasync makes it durable.
const SLOT: usize = 4096;

fn read_slot(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let n = frame::body_len(&bytes, usize::MAX).ok().flatten().unwrap_or(0);
    // A torn or emptied slot reads as whatever bytes it holds; the enclave's tag check decides.
    Ok(Some(bytes.get(4..4 + n).map(<[u8]>::to_vec).unwrap_or_else(|| bytes.clone())))
}

fn write_slot(dir: &Path, file: &str, record: &[u8], sync: bool) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    let path = dir.join(file);
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(&path)?;
    let mut block = frame::encode(record, u32::MAX as usize).map_err(std::io::Error::other)?;
    block.resize(block.len().max(SLOT), 0);
    f.seek(std::io::SeekFrom::Start(0))?;
    f.write_all(&block)?;
    if sync {
        if new {
            f.sync_all()?;
            std::fs::File::open(dir)?.sync_all()?;
        } else {
            f.sync_data()?;
        }
    }
    Ok(())
}

/// The reply to one request's `body`, the records in `dir`.
fn answer(dir: &Path, sync: bool, body: &[u8]) -> StoreReply {
    let request = match StoreRequest::decode(body) {
        Ok(r) => r,
        Err(e) => return StoreReply::Failed(e.to_string()),
    };
    let files = match &request {
        StoreRequest::Get { name } | StoreRequest::Put { name, .. } => file_names(name),
    };
    let files = match files {
        Ok(f) => f,
        Err(e) => return StoreReply::Failed(e.to_string()),
    };
    match request {
        StoreRequest::Get { .. } => {
            let mut slots = Vec::new();
            for f in &files {
                match read_slot(&dir.join(f)) {
                    Ok(Some(b)) if !b.is_empty() => slots.push(b),
                    Ok(_) => {}
                    Err(e) => return StoreReply::Failed(format!("{f}: {e}")),
                }
            }
            if slots.is_empty() {
                StoreReply::None
            } else {
                StoreReply::Slots(slots)
            }
        }
        StoreRequest::Put { record, .. } => {
            // The slot is the record's counter modulo 2, so the newest and
            // the one before are always both on disk.
            let Some(counter) = nekms_privval::record::peek(&record).map(|r| r.counter) else {
                return StoreReply::Failed("not a state record".into());
            };
            let file = &files[(counter % 2) as usize];
            match write_slot(dir, file, &record, sync) {
                Ok(()) => StoreReply::Stored,
                Err(e) => StoreReply::Failed(format!("{file}: {e}")),
            }
        }
    }
}

/// `nekms privval persist`: the state store on `listen`, records in `dir`
/// (fdatasynced before each acknowledgement unless `sync` is off), until
/// SIGTERM or Ctrl-C.
pub async fn persist(listen: &str, dir: &Path, sync: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let listener = Listener::bind(&listen.parse()?).await.with_context(|| format!("listening on {listen}"))?;
    tracing::info!(
        "privval persist: state records in {} ({}); listening on {}",
        dir.display(),
        if sync { "two slots per chain, fdatasync before each acknowledgement" } else { "NO fsync" },
        listener.local_address()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = serve_store(listener, dir.to_path_buf(), sync) => r,
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// The state store on `listener`, records in `dir` (the demo runs it in process).
pub async fn serve_store(listener: Listener, dir: PathBuf, sync: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let dir = Arc::new(dir);
    // One write at a time: the enclave sends one, and a second enclave must not interleave.
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    // At most this many connections at once (an enclave keeps one or two).
    let open = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let (mut stream, peer) = listener.accept().await?;
        if nekms_transport::from_enclave_cid(&peer) == Some(false) {
            tracing::warn!(%peer, "privval persist: refused: not an enclave (only CID 4 and up write here)");
            continue;
        }
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "privval persist: refused: 64 connections are open");
            continue;
        };
        let (dir, lock) = (dir.clone(), lock.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = Vec::new();
            loop {
                let body = match read_frame(&mut stream, &mut buf, nekms_privval::store::MAX_RECORD + 256).await {
                    Ok(Some(b)) => b,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(%peer, "privval persist: {e}");
                        return;
                    }
                };
                let reply = {
                    let _held = lock.lock().await;
                    let dir = dir.clone();
                    tokio::task::spawn_blocking(move || answer(&dir, sync, &body))
                        .await
                        .unwrap_or_else(|e| StoreReply::Failed(e.to_string()))
                };
                if let StoreReply::Failed(why) = &reply {
                    tracing::error!("privval persist: {why}");
                }
                if write_frame(&mut stream, &reply.encode(), u32::MAX as usize).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// `nekms privval state show`: each slot file in `dir` as the parent reads
/// it (a JSON object per file, in file-name order). Its tag is not checked:
/// only the enclave holds the key, so every row says `"verified": false`.
pub fn records(dir: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut rows = Vec::new();
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(dir).with_context(|| dir.display().to_string())?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if !(name.ends_with(".state.0") || name.ends_with(".state.1")) {
            continue;
        }
        let bytes = read_slot(&path)?.unwrap_or_default();
        rows.push(match nekms_privval::record::peek(&bytes) {
            Some(r) => serde_json::json!({
                "file": name, "chain_id": r.chain_id, "key_fingerprint": r.key_id,
                "counter": r.counter, "height": r.last.height, "round": r.last.round, "step": r.last.step.map_or(0, |s| s as u8),
                "sign_bytes": r.last.sign_bytes.as_deref().map(hex::encode), "verified": false,
            }),
            None => serde_json::json!({"file": name, "error": "not a nekms privval state record"}),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::hmac;
    use nekms_privval::record::StateRecord;
    use nekms_privval::state::{LastSigned, Step};

    use super::*;

    const FP: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn record(counter: u64, height: i64) -> Vec<u8> {
        let last = LastSigned { height, round: 0, step: Some(Step::Prevote), sign_bytes: Some(vec![7; 9]), signature: None };
        StateRecord { key_id: FP.into(), chain_id: "test-chain".into(), counter, last }.seal(&hmac::Key::new(hmac::HMAC_SHA256, b"k"))
    }

    fn name() -> String {
        nekms_privval::store::name(FP, "test-chain")
    }

    fn ask(dir: &Path, request: StoreRequest) -> StoreReply {
        answer(dir, false, &request.encode())
    }

    #[test]
    fn slot_file_names_escape_every_byte_of_the_chain_id_but_alphanumerics_and_dash_underscore_dot() {
        let [a, b] = file_names(&nekms_privval::store::name(FP, "my chain/1_a.b-c")).unwrap();
        assert_eq!(a, format!("my%20chain%2F1_a.b-c@{FP}.state.0"));
        assert_eq!(b, format!("my%20chain%2F1_a.b-c@{FP}.state.1"));
    }

    #[test]
    fn a_record_goes_to_the_slot_of_its_counter_modulo_2_and_a_read_returns_both() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ask(dir.path(), StoreRequest::Get { name: name() }), StoreReply::None);
        assert_eq!(ask(dir.path(), StoreRequest::Put { name: name(), record: record(3, 10) }), StoreReply::Stored);
        assert!(dir.path().join(format!("test-chain@{FP}.state.1")).exists());
        assert!(!dir.path().join(format!("test-chain@{FP}.state.0")).exists());
        assert_eq!(ask(dir.path(), StoreRequest::Get { name: name() }), StoreReply::Slots(vec![record(3, 10)]));
        assert_eq!(ask(dir.path(), StoreRequest::Put { name: name(), record: record(4, 11) }), StoreReply::Stored);
        assert_eq!(ask(dir.path(), StoreRequest::Get { name: name() }), StoreReply::Slots(vec![record(4, 11), record(3, 10)]));
        // The next write replaces the older of the two, never the newest.
        assert_eq!(ask(dir.path(), StoreRequest::Put { name: name(), record: record(5, 12) }), StoreReply::Stored);
        assert_eq!(ask(dir.path(), StoreRequest::Get { name: name() }), StoreReply::Slots(vec![record(4, 11), record(5, 12)]));
    }

    #[test]
    fn a_slot_is_a_fixed_size_frame_overwritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        write_slot(dir.path(), "s", &[1; 300], false).unwrap();
        write_slot(dir.path(), "s", &[2; 10], true).unwrap();
        let bytes = std::fs::read(dir.path().join("s")).unwrap();
        assert_eq!(bytes.len(), SLOT);
        assert_eq!(&bytes[..4], &10u32.to_be_bytes());
        assert_eq!(read_slot(&dir.path().join("s")).unwrap(), Some(vec![2; 10]));
    }

    #[test]
    fn a_torn_slot_reads_as_the_bytes_it_holds_for_the_enclave_to_refuse() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), [0, 0, 1, 0, 9, 9]).unwrap();
        assert_eq!(read_slot(&dir.path().join("s")).unwrap(), Some(vec![0, 0, 1, 0, 9, 9]));
        assert_eq!(read_slot(&dir.path().join("absent")).unwrap(), None);
    }

    #[test]
    fn what_is_not_a_state_record_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let reply = ask(dir.path(), StoreRequest::Put { name: name(), record: b"not a record".to_vec() });
        assert_eq!(reply, StoreReply::Failed("not a state record".into()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_malformed_request_fails_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(answer(dir.path(), false, &[]), StoreReply::Failed("not a state-store message: empty".into()));
    }

    #[test]
    fn records_lists_each_slot_as_the_parent_reads_it_unverified() {
        let dir = tempfile::tempdir().unwrap();
        ask(dir.path(), StoreRequest::Put { name: name(), record: record(2, 10) });
        std::fs::write(dir.path().join(format!("test-chain@{FP}.state.1")), b"garbage").unwrap();
        std::fs::write(dir.path().join("unrelated.txt"), b"x").unwrap();
        let rows = records(dir.path()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["file"], format!("test-chain@{FP}.state.0"));
        assert_eq!(rows[0]["height"], 10);
        assert_eq!(rows[0]["step"], 2);
        assert_eq!(rows[0]["sign_bytes"], "070707070707070707");
        assert_eq!(rows[0]["verified"], false);
        assert_eq!(rows[1]["error"], "not a nekms privval state record");
    }

    #[tokio::test]
    async fn the_store_answers_framed_requests_over_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let listener = Listener::bind(&format!("unix://{}", dir.path().join("store.sock").display()).parse().unwrap()).await.unwrap();
        let address = listener.local_address().clone();
        let server = tokio::spawn(serve_store(listener, dir.path().join("records"), true));
        let mut conn = nekms_transport::connect(&address).await.unwrap();
        let mut buf = Vec::new();
        for (request, expected) in [
            (StoreRequest::Put { name: name(), record: record(1, 5) }, StoreReply::Stored),
            (StoreRequest::Get { name: name() }, StoreReply::Slots(vec![record(1, 5)])),
        ] {
            write_frame(&mut conn, &request.encode(), u32::MAX as usize).await.unwrap();
            let reply = read_frame(&mut conn, &mut buf, 1 << 20).await.unwrap().unwrap();
            assert_eq!(StoreReply::decode(&reply).unwrap(), expected);
        }
        server.abort();
    }
}

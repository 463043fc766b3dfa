//! The audit trail: one chained, periodically signed line per decision that
//! uses a key, streamed to the parent (format: [`nekms_protocol::audit`]).
//!
//! The audit key (Ed25519) is made at start and never leaves this memory;
//! the start line binds it to this image with an attestation document.
//! Lines wait in a bounded queue for the parent's collector; if the parent
//! does not take them, the oldest are dropped and a signed `lost` line says
//! which, so whoever reads the file knows what is missing and that nothing
//! else was removed. A checkpoint is signed every [`CHECKPOINT_EVERY`]
//! lines, and within [`CHECKPOINT_AFTER`] of any line not yet covered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_nsm::{AttestationRequest, Nsm};
use nekms_protocol::audit::{checkpoint_message, lost_message, START_PREFIX};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// Lines kept for the parent before the oldest are dropped.
pub const QUEUE: usize = 10_000;
pub const CHECKPOINT_EVERY: u64 = 32;
pub const CHECKPOINT_AFTER: Duration = Duration::from_secs(2);

/// One decision, as a line records it.
#[derive(Default)]
pub struct Decision {
    pub channel: &'static str,
    pub op: String,
    pub key: Option<String>,
    pub key_sha256: Option<String>,
    pub scheme: Option<String>,
    pub payload_sha256: Option<String>,
    pub caller: Option<String>,
}

/// The hex SHA-256 of some bytes (a payload, a public key).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest(&SHA256, bytes))
}

struct Queued {
    seq: u64,
    /// The hash of the line before this one.
    prev: [u8; 32],
    hash: [u8; 32],
    line: String,
}

/// Records dropped in a row, not yet reported.
#[derive(Clone, Copy)]
struct LostRun {
    from: u64,
    to: u64,
    after: [u8; 32],
    last: [u8; 32],
}

struct State {
    seq: u64,
    prev: [u8; 32],
    queue: VecDeque<Queued>,
    lost: Vec<LostRun>,
    /// Chained lines since the last checkpoint, and when the first of them was written.
    uncovered: u64,
    uncovered_since: Option<Instant>,
}

pub struct Audit {
    key: Ed25519KeyPair,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

impl Audit {
    /// A new trail, its start line written: the audit key and a document binding it to this image.
    pub fn new(nsm: &dyn Nsm) -> anyhow::Result<Audit> {
        let key = Ed25519KeyPair::generate().map_err(|_| anyhow::anyhow!("making the audit key"))?;
        let public = key.public_key().as_ref().to_vec();
        let document = nsm
            .attestation(AttestationRequest { user_data: Some([START_PREFIX, &public].concat()), nonce: None, public_key: None })
            .map_err(|e| anyhow::anyhow!("the audit key's document: {e}"))?;
        let state = State { seq: 0, prev: [0; 32], queue: VecDeque::new(), lost: Vec::new(), uncovered: 0, uncovered_since: None };
        let audit = Audit { key, state: Mutex::new(state), wake: tokio::sync::Notify::new(), written: 0.into(), dropped: 0.into() };
        audit.chain(json!({"kind": "start", "audit_key": B64.encode(&public), "document": B64.encode(&document)}));
        Ok(audit)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append a chained line (`seq`, `time_ms`, `prev` are added), then a checkpoint if one is due.
    fn chain(&self, mut fields: Value) {
        let mut st = self.lock();
        self.push(&mut st, &mut fields);
        st.uncovered += 1;
        st.uncovered_since.get_or_insert_with(Instant::now);
        if st.uncovered >= CHECKPOINT_EVERY {
            self.checkpoint_locked(&mut st);
        }
        drop(st);
        self.wake.notify_one();
    }

    fn push(&self, st: &mut State, fields: &mut Value) {
        fields["seq"] = json!(st.seq);
        fields["time_ms"] = json!(now_ms());
        fields["prev"] = json!(hex::encode(st.prev));
        let line = fields.to_string();
        let hash: [u8; 32] = digest(&SHA256, line.as_bytes()).as_ref().try_into().expect("32 bytes");
        if st.queue.len() >= QUEUE {
            let old = st.queue.pop_front().expect("full");
            lose(st, &[old]);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        st.queue.push_back(Queued { seq: st.seq, prev: st.prev, hash, line });
        st.seq += 1;
        st.prev = hash;
        self.written.fetch_add(1, Ordering::Relaxed);
    }

    fn checkpoint_locked(&self, st: &mut State) {
        let signature = self.key.sign(&checkpoint_message(st.seq, &st.prev));
        let mut fields = json!({"kind": "checkpoint", "signature": B64.encode(signature.as_ref())});
        self.push(st, &mut fields);
        st.uncovered = 0;
        st.uncovered_since = None;
    }

    /// Sign a checkpoint if a line has waited long enough for one.
    pub fn tick(&self) {
        let mut st = self.lock();
        if st.uncovered_since.is_some_and(|t| t.elapsed() >= CHECKPOINT_AFTER) {
            self.checkpoint_locked(&mut st);
            drop(st);
            self.wake.notify_one();
        }
    }

    /// On the way out: a checkpoint over every line, and up to a second for the sender to deliver them.
    pub async fn flush(&self) {
        {
            let mut st = self.lock();
            if st.uncovered > 0 {
                self.checkpoint_locked(&mut st);
            }
        }
        self.wake.notify_one();
        for _ in 0..50 {
            if self.lock().queue.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Record a decision and the enclave's answer: a refusal by a rule, a
    /// wrong or locked PIN, a record that fails its checks are `refused`.
    pub fn decision<T>(&self, d: Decision, outcome: &Result<T, nekms_rpc::RpcError>) {
        use nekms_rpc::ErrorCode as C;
        let refused = |e: &nekms_rpc::RpcError| match e.code {
            C::Refused | C::RecordRejected => true,
            C::Pkcs11 => matches!(e.pkcs11, Some(0xA0 | 0xA4 | 0x101 | 0x68)),
            _ => false,
        };
        self.record(d, outcome.as_ref().map(|_| ()).map_err(|e| (refused(e), e.message.clone())));
    }

    /// Record a decision: `Err((refused, why))` when it was not carried out.
    pub fn record(&self, d: Decision, outcome: Result<(), (bool, String)>) {
        let result = match outcome {
            Ok(()) => "ok".to_owned(),
            Err((true, why)) => format!("refused: {why}"),
            Err((false, why)) => format!("error: {why}"),
        };
        let key = d.key.as_deref().unwrap_or("-");
        let caller = d.caller.as_deref().unwrap_or("-");
        // A record sent without its origin document is the client's first try (it sends the whole record next).
        if result == "ok" || result.contains(nekms_protocol::record::ORIGIN_MISSING) {
            tracing::debug!(channel = d.channel, op = %d.op, key, caller, "{result}");
        } else {
            tracing::info!(channel = d.channel, op = %d.op, key, caller, "{result}");
        }
        let mut fields = json!({"kind": "decision", "channel": d.channel, "op": d.op, "result": result});
        for (name, value) in
            [("key", d.key), ("key_sha256", d.key_sha256), ("scheme", d.scheme), ("payload_sha256", d.payload_sha256), ("caller", d.caller)]
        {
            if let Some(v) = value {
                fields[name] = json!(v);
            }
        }
        self.chain(fields);
    }

    /// The next lines to send: signed `lost` lines first if records were dropped.
    fn take(&self) -> (Vec<LostRun>, Vec<Queued>) {
        let mut st = self.lock();
        (std::mem::take(&mut st.lost), st.queue.drain(..).collect())
    }

    fn lost_line(&self, run: &LostRun) -> String {
        let signature = self.key.sign(&lost_message(run.from, run.to, &run.after, &run.last));
        json!({"kind": "lost", "from": run.from, "to": run.to, "after": hex::encode(run.after), "last": hex::encode(run.last),
               "time_ms": now_ms(), "signature": B64.encode(signature.as_ref())})
        .to_string()
    }

    /// Lines taken but not delivered: reported as lost, before anything lost since.
    fn undelivered(&self, runs: Vec<LostRun>, lines: &[Queued]) {
        let mut st = self.lock();
        let later = std::mem::replace(&mut st.lost, runs);
        lose(&mut st, lines);
        for run in later {
            push_run(&mut st.lost, run);
        }
        self.dropped.fetch_add(lines.len() as u64, Ordering::Relaxed);
    }

    /// Stream the trail to the parent's collector at `address`, reconnecting
    /// as needed, until the task is dropped. Lines taken but not written
    /// when a connection breaks are lost, and said to be.
    pub async fn stream(&self, address: nekms_transport::Address) {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        loop {
            let mut conn = match nekms_transport::connect(&address).await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.tick();
                    continue;
                }
            };
            loop {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = ticker.tick() => self.tick(),
                }
                let (runs, lines) = self.take();
                if runs.is_empty() && lines.is_empty() {
                    continue;
                }
                let mut bytes = String::new();
                for line in runs.iter().map(|r| self.lost_line(r)).chain(lines.iter().map(|q| q.line.clone())) {
                    bytes.push_str(&line);
                    bytes.push('\n');
                }
                if conn.write_all(bytes.as_bytes()).await.is_err() {
                    self.undelivered(runs, &lines);
                    break;
                }
            }
        }
    }
}

/// Add dropped lines to the runs to report.
fn lose(st: &mut State, lines: &[Queued]) {
    for q in lines {
        push_run(&mut st.lost, LostRun { from: q.seq, to: q.seq, after: q.prev, last: q.hash });
    }
}

/// Append a run, merged with the last one when they meet.
fn push_run(runs: &mut Vec<LostRun>, run: LostRun) {
    match runs.last_mut() {
        Some(last) if last.to + 1 == run.from => (last.to, last.last) = (run.to, run.last),
        _ => runs.push(run),
    }
}

/// The decision a request asks for, if it is one the trail records: every
/// use of a key, key creation and import, decryption for the parent, a
/// PKCS#11 login, a migration. `channel` says where it came from.
pub fn of_request(enclave: &crate::Enclave, channel: &'static str, request: &nekms_rpc::Request) -> Option<Decision> {
    use nekms_rpc::{P11Request as P, Request as R};
    let d = |op: &str| Decision { channel, op: op.to_owned(), ..Decision::default() };
    Some(match request {
        R::Sign { record, scheme, payload } => Decision {
            key: Some(record.key_id.clone()),
            key_sha256: Some(sha256_hex(&record.public_key)),
            scheme: Some(scheme.map_or_else(|| "default".to_owned(), |s| s.name())),
            payload_sha256: Some(payload_sha256(payload)),
            ..d("Sign")
        },
        R::KeyDecrypt { record, hash, ciphertext } => Decision {
            key: Some(record.key_id.clone()),
            key_sha256: Some(sha256_hex(&record.public_key)),
            scheme: Some(format!("RSAES-OAEP-{hash:?}")),
            payload_sha256: Some(sha256_hex(ciphertext)),
            ..d("KeyDecrypt")
        },
        R::GenerateKey(g) => Decision { key: Some(g.key_id.clone()), scheme: Some(g.spec.as_str().to_owned()), ..d("GenerateKey") },
        R::ImportKey(i) => Decision { key: Some(i.key_id.clone()), ..d("ImportKey") },
        R::Decrypt { ciphertext, key_id, .. } => {
            Decision { key: key_id.clone(), payload_sha256: Some(sha256_hex(ciphertext)), ..d("Decrypt") }
        }
        R::GenerateDataKey { key_id, .. } => Decision { key: Some(key_id.clone()), ..d("GenerateDataKey") },
        R::P11(P::Sign { handle, id, scheme, payload }) => Decision {
            key: Some(hex::encode(id)),
            scheme: Some(scheme.name()),
            payload_sha256: Some(payload_sha256(payload)),
            caller: enclave.p11.label_of(handle).map(|l| format!("token {l}")),
            ..d("P11 Sign")
        },
        R::P11(P::Decrypt { handle, id, ciphertext, .. }) => Decision {
            key: Some(hex::encode(id)),
            payload_sha256: Some(sha256_hex(ciphertext)),
            caller: enclave.p11.label_of(handle).map(|l| format!("token {l}")),
            ..d("P11 Decrypt")
        },
        R::P11(P::GenerateKeyPair { handle, spec, id, .. }) => Decision {
            key: Some(hex::encode(id)),
            scheme: Some(spec.as_str().to_owned()),
            caller: enclave.p11.label_of(handle).map(|l| format!("token {l}")),
            ..d("P11 GenerateKeyPair")
        },
        R::P11(P::Login { handle, .. }) => {
            Decision { caller: enclave.p11.label_of(handle).map(|l| format!("token {l}")), ..d("P11 Login") }
        }
        R::P11(P::AddToken { token, .. }) => Decision { caller: Some(format!("token {}", token.label)), ..d("P11 AddToken") },
        R::Migrate(nekms_rpc::MigrateRequest::Records { records, .. }) => {
            Decision { key: Some(records.iter().map(|r| r.record.key_id.as_str()).collect::<Vec<_>>().join(",")), ..d("Migrate") }
        }
        _ => return None,
    })
}

fn payload_sha256(p: &nekms_protocol::Payload) -> String {
    use nekms_protocol::Payload;
    match p {
        Payload::Message(b) | Payload::Digest(b) => sha256_hex(b),
        Payload::TypedData(s) | Payload::Transaction(s) => sha256_hex(s.as_bytes()),
    }
}

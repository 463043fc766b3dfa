//! What a quorum approves when custody moves to another KMS key: the
//! migration statement, the manifest of the records it moves (a Merkle tree,
//! so each moved record carries a short proof), and the approvers' detached
//! signatures.
//!
//! - **The statement** is canonical JSON: keys sorted, no whitespace, only
//!   objects, arrays, strings and small integers, strings of printable
//!   ASCII, at most [`MAX_STATEMENT`] bytes. [`Statement::parse`] re-writes
//!   what it read and refuses bytes that differ, so one content has exactly
//!   one byte form and "the statement the approvers signed" is well defined.
//! - **The manifest** lists one leaf per record (key id, SHA-256 of the
//!   source record's sealed and bound fields, its first origin, spec and
//!   SHA-256 of its public key), sorted by key id. Leaves hash as
//!   `SHA-256(0x00 || fields, each length-prefixed)`, nodes as
//!   `SHA-256(0x01 || left || right)`, split as RFC 9162 (certificate
//!   transparency) splits; the statement holds the root and the count.
//! - **An approval** signs `"nekms-migration:v1\0" || SHA-256(statement)`
//!   with an Ed25519 key or a P-256 key (ECDSA with SHA-256, DER, as KMS's
//!   `Sign` with `ECDSA_SHA_256` returns it). Each approver counts once;
//!   unknown approvers and bad signatures are reported, never counted.
//!
//! Each refusal names its rule (`migration-statement`, `migration-quorum`,
//! `migration-manifest`).

use std::collections::BTreeMap;

use aws_lc_rs::digest::{digest, Context, SHA256};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::{KeySpec, Payload, PrivateKey, PublicKey, Scheme};

/// The largest statement accepted.
pub const MAX_STATEMENT: usize = 8 * 1024;
/// The most records one statement moves.
pub const MAX_RECORDS: u32 = 100_000;
/// What an approval signs, before the statement's SHA-256.
pub const DOMAIN: &[u8] = b"nekms-migration:v1\0";

/// Why a statement, manifest or approval is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    #[error("rule migration-statement: {0}")]
    Statement(String),
    #[error("rule migration-quorum: {valid} valid approval(s) of the {needed} needed{}", failures_text(.failures))]
    Quorum { valid: usize, needed: usize, failures: Vec<String> },
    #[error("rule migration-manifest: {0}")]
    Manifest(String),
}

fn failures_text(failures: &[String]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        format!(" ({})", failures.join("; "))
    }
}

/// Images by PCR0 and/or PCR8 (hex).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pcr0: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pcr8: Vec<String>,
}

/// The records a statement moves: how many, and their manifest's root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSet {
    pub count: u32,
    /// Hex SHA-256.
    pub root: String,
}

/// Where the records are now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub custody_kms_key: String,
    /// The image that re-seals: its PCR0 or PCR8.
    pub enclave: Images,
}

/// The roles the target's policy names: the instance role that carries the
/// enclave's calls, and the key administrator. The approvers see them; the
/// enclave rebuilds the target's template with exactly these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    pub admin: String,
    pub instance: String,
}

/// Where they go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub custody_kms_key: String,
    pub roles: Roles,
    /// Hex SHA-256 of the target key's policy, as canonical JSON.
    pub policy_sha256: String,
    /// The images the target key trusts.
    pub trust: Images,
    /// Until when the target's policy lets the source image seal migrated records (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_until: Option<String>,
}

/// A migration statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub version: u32,
    pub kind: String,
    /// RFC 3339, UTC (`2026-12-20T00:00:00Z`).
    pub expires: String,
    /// Base64 of the 32 bytes the source enclave issued for this statement.
    pub nonce: String,
    pub records: RecordSet,
    pub source: Source,
    pub target: Target,
}

/// The statement's `kind`.
pub const KIND: &str = "nekms-migration";

fn statement_error(s: impl Into<String>) -> MigrationError {
    MigrationError::Statement(s.into())
}

/// `value` as canonical JSON: sorted keys (serde_json's map is ordered), no
/// whitespace; only strings of printable ASCII and integers below 2^32.
fn canonical(value: &serde_json::Value) -> Result<Vec<u8>, MigrationError> {
    fn check(v: &serde_json::Value) -> Result<(), MigrationError> {
        match v {
            serde_json::Value::Object(m) => m.iter().try_for_each(|(k, v)| check(&serde_json::Value::String(k.clone())).and(check(v))),
            serde_json::Value::Array(a) => a.iter().try_for_each(check),
            serde_json::Value::String(s) if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') => Ok(()),
            serde_json::Value::String(_) => Err(statement_error("strings are printable ASCII without quotes or backslashes")),
            serde_json::Value::Number(n) if n.as_u64().is_some_and(|n| n < 1 << 32) => Ok(()),
            _ => Err(statement_error("only objects, arrays, strings and integers below 2^32")),
        }
    }
    check(value)?;
    Ok(serde_json::to_vec(value).expect("a Value serialises"))
}

/// Hex of `len` bytes.
fn is_hex(s: &str, len: usize) -> bool {
    s.len() == 2 * len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is `YYYY-MM-DDTHH:MM:SSZ`; its Unix time.
pub fn parse_utc(s: &str) -> Option<i64> {
    let t = time::PrimitiveDateTime::parse(
        s.strip_suffix('Z')?,
        &time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
    )
    .ok()?;
    Some(t.assume_utc().unix_timestamp())
}

/// Unix time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(unix: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    t.format(&time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z")).ok()
}

impl Statement {
    /// The canonical bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, MigrationError> {
        self.check()?;
        canonical(&serde_json::to_value(self).expect("a statement serialises"))
    }

    /// Read a statement, refusing anything that is not exactly its canonical form.
    pub fn parse(bytes: &[u8]) -> Result<Statement, MigrationError> {
        if bytes.len() > MAX_STATEMENT {
            return Err(statement_error(format!("{} bytes, more than {MAX_STATEMENT}", bytes.len())));
        }
        let statement: Statement = serde_json::from_slice(bytes).map_err(|e| statement_error(e.to_string()))?;
        if statement.to_bytes()? != bytes {
            return Err(statement_error("not in canonical form (keys sorted, no whitespace, nothing left out or added)"));
        }
        Ok(statement)
    }

    /// The fields' own rules.
    fn check(&self) -> Result<(), MigrationError> {
        if self.version != 1 || self.kind != KIND {
            return Err(statement_error(format!("version {} of kind {:?}; this is version 1 of {KIND:?}", self.version, self.kind)));
        }
        if parse_utc(&self.expires).is_none() || self.target.window_until.as_deref().is_some_and(|w| parse_utc(w).is_none()) {
            return Err(statement_error("times are written YYYY-MM-DDTHH:MM:SSZ"));
        }
        if B64.decode(&self.nonce).map(|n| n.len()) != Ok(32) {
            return Err(statement_error("the nonce is base64 of 32 bytes"));
        }
        if self.records.count == 0 || self.records.count > MAX_RECORDS || !is_hex(&self.records.root, 32) {
            return Err(statement_error(format!("records: 1 to {MAX_RECORDS}, and a root of 64 lower-case hex digits")));
        }
        if !is_hex(&self.target.policy_sha256, 32) {
            return Err(statement_error("target.policy_sha256 is 64 lower-case hex digits"));
        }
        for images in [&self.source.enclave, &self.target.trust] {
            if images.pcr0.is_empty() && images.pcr8.is_empty() {
                return Err(statement_error("name the images by PCR0 or PCR8"));
            }
            if images.pcr0.iter().chain(&images.pcr8).any(|p| !is_hex(p, 48) || p.bytes().all(|b| b == b'0')) {
                return Err(statement_error("PCRs are 96 lower-case hex digits, never all zero"));
            }
        }
        if self.source.custody_kms_key == self.target.custody_kms_key {
            return Err(statement_error("the target key is the source key"));
        }
        // The roles: two distinct IAM roles of the target key's own account, no wildcard.
        let account = |arn: &str| arn.split(':').nth(4).map(str::to_owned);
        let target_account = account(&self.target.custody_kms_key);
        for role in [&self.target.roles.admin, &self.target.roles.instance] {
            let ok = role.starts_with("arn:aws")
                && role.split(':').nth(2) == Some("iam")
                && account(role) == target_account
                && role.split(':').nth(5).is_some_and(|r| r.starts_with("role/") && r.len() > 5)
                && !role.contains(['*', '?', '$']);
            if !ok {
                return Err(statement_error(format!("target role {role:?}: an IAM role of the target key's account, no wildcard")));
            }
        }
        if self.target.roles.admin == self.target.roles.instance {
            return Err(statement_error("the target's administrator is its instance role"));
        }
        if target_account != account(&self.source.custody_kms_key) {
            return Err(statement_error("the target key is in another account than the source key"));
        }
        Ok(())
    }

    /// Unix time of `expires`.
    pub fn expires_at(&self) -> i64 {
        parse_utc(&self.expires).expect("checked")
    }
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest(&SHA256, bytes))
}

/// A key policy's `policy_sha256`: SHA-256 of its JSON with keys sorted and
/// no whitespace, so the administrator's and the enclave's readings agree
/// however KMS spaced it.
pub fn policy_sha256(policy: &serde_json::Value) -> String {
    sha256_hex(&serde_json::to_vec(policy).expect("a Value serialises"))
}

/// What an approval signs for `statement` (its canonical bytes).
pub fn message(statement: &[u8]) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(digest(&SHA256, statement).as_ref());
    m
}

/// An approver's id: the first 8 bytes of SHA-256 of its SPKI, hex.
pub fn approver_id(spki: &[u8]) -> String {
    hex::encode(&digest(&SHA256, spki).as_ref()[..8])
}

pub use nekms_protocol::rpc::Approval;

/// The algorithm an approver's key signs with, if it may approve.
fn algorithm(spec: KeySpec) -> Option<(&'static str, Scheme)> {
    match spec {
        KeySpec::Ed25519 => Some(("ed25519", Scheme::Ed25519)),
        KeySpec::P256 => Some(("ecdsa-p256-sha256", Scheme::EcdsaDer)),
        _ => None,
    }
}

/// Check an approver's public key (SPKI DER): Ed25519 or P-256.
pub fn check_approver(spki: &[u8]) -> Result<PublicKey, String> {
    let key = PublicKey::from_spki(spki).map_err(|e| e.to_string())?;
    match algorithm(key.spec()) {
        Some(_) => Ok(key),
        None => Err(format!("a {} key; approvers hold Ed25519 or P-256 keys", key.spec())),
    }
}

/// Approve `statement` (its canonical bytes) with an approver's key.
pub fn approve(statement: &[u8], key: &PrivateKey) -> Result<Approval, String> {
    let (name, scheme) = algorithm(key.spec()).ok_or(format!("a {} key cannot approve: use Ed25519 or P-256", key.spec()))?;
    let signature = key.sign(scheme, &Payload::Message(message(statement))).map_err(|e| e.to_string())?;
    Ok(Approval { approver: B64.encode(key.public_key().spki()), algorithm: name.into(), signature: B64.encode(signature.signature) })
}

/// The approvals that count for `statement` among `approvers` (SPKI DER):
/// their ids, once `threshold` distinct approvers' signatures verify.
pub fn check_quorum(
    statement: &[u8],
    approvals: &[Approval],
    approvers: &[Vec<u8>],
    threshold: usize,
) -> Result<Vec<String>, MigrationError> {
    let message = message(statement);
    let mut valid = BTreeMap::new();
    let mut failures = Vec::new();
    for a in approvals {
        let Ok(spki) = B64.decode(&a.approver) else {
            failures.push("an approver that is not base64".into());
            continue;
        };
        let id = approver_id(&spki);
        if !approvers.contains(&spki) {
            failures.push(format!("{id} is not an approver"));
            continue;
        }
        let checked = check_approver(&spki).and_then(|key| {
            let (name, scheme) = algorithm(key.spec()).expect("checked");
            if a.algorithm != name {
                return Err(format!("algorithm {:?}, not {name}", a.algorithm));
            }
            let signature = B64.decode(&a.signature).map_err(|_| "a signature that is not base64".to_string())?;
            key.verify(scheme, &Payload::Message(message.clone()), &signature).map_err(|_| "a signature that does not verify".to_string())
        });
        match checked {
            Ok(()) => {
                valid.insert(id, ());
            }
            Err(e) => failures.push(format!("{id}: {e}")),
        }
    }
    if threshold == 0 || valid.len() < threshold {
        return Err(MigrationError::Quorum { valid: valid.len(), needed: threshold.max(1), failures });
    }
    Ok(valid.into_keys().collect())
}

/// One record in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leaf {
    pub key_id: String,
    /// Hex SHA-256 of the source record's sealed and bound fields.
    pub source_record_sha256: String,
    /// `generated` or `imported`: a migrated record carries its first origin through.
    pub first_origin: String,
    pub spec: String,
    /// Hex SHA-256 of the public key (SPKI DER).
    pub spki_sha256: String,
}

impl Leaf {
    /// `SHA-256(0x00 || each field as a 4-byte big-endian length and its bytes)`.
    pub fn hash(&self) -> [u8; 32] {
        let mut ctx = Context::new(&SHA256);
        ctx.update(&[0]);
        for field in [&self.key_id, &self.source_record_sha256, &self.first_origin, &self.spec, &self.spki_sha256] {
            ctx.update(&(field.len() as u32).to_be_bytes());
            ctx.update(field.as_bytes());
        }
        ctx.finish().as_ref().try_into().expect("32 bytes")
    }
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[1]);
    ctx.update(left);
    ctx.update(right);
    ctx.finish().as_ref().try_into().expect("32 bytes")
}

/// The largest power of two below `n` (n > 1).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

fn root_of(hashes: &[[u8; 32]]) -> [u8; 32] {
    match hashes.len() {
        1 => hashes[0],
        n => {
            let k = split(n);
            node(&root_of(&hashes[..k]), &root_of(&hashes[k..]))
        }
    }
}

fn path_of(m: usize, hashes: &[[u8; 32]]) -> Vec<[u8; 32]> {
    if hashes.len() <= 1 {
        return Vec::new();
    }
    let k = split(hashes.len());
    if m < k {
        let mut p = path_of(m, &hashes[..k]);
        p.push(root_of(&hashes[k..]));
        p
    } else {
        let mut p = path_of(m - k, &hashes[k..]);
        p.push(root_of(&hashes[..k]));
        p
    }
}

/// A manifest: leaves sorted by key id, each id once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub leaves: Vec<Leaf>,
}

impl Manifest {
    /// Sort and check the leaves.
    pub fn new(mut leaves: Vec<Leaf>) -> Result<Manifest, MigrationError> {
        leaves.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        if leaves.is_empty() || leaves.len() > MAX_RECORDS as usize {
            return Err(MigrationError::Manifest(format!("1 to {MAX_RECORDS} records, not {}", leaves.len())));
        }
        if let Some(w) = leaves.windows(2).find(|w| w[0].key_id == w[1].key_id) {
            return Err(MigrationError::Manifest(format!("key id {} twice", w[0].key_id)));
        }
        Ok(Manifest { leaves })
    }

    fn hashes(&self) -> Vec<[u8; 32]> {
        self.leaves.iter().map(Leaf::hash).collect()
    }

    /// The root, hex.
    pub fn root(&self) -> String {
        hex::encode(root_of(&self.hashes()))
    }

    /// The proof for the record `key_id`.
    pub fn proof(&self, key_id: &str) -> Option<Proof> {
        let index = self.leaves.binary_search_by(|l| l.key_id.as_str().cmp(key_id)).ok()?;
        let path = path_of(index, &self.hashes()).iter().map(hex::encode).collect();
        Some(Proof { index: index as u32, count: self.leaves.len() as u32, path })
    }
}

/// Where a leaf stands in the tree, and the hashes that lead to the root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    pub index: u32,
    pub count: u32,
    /// Hex SHA-256, from the leaf's sibling up.
    pub path: Vec<String>,
}

impl Proof {
    /// Whether `leaf` at this index leads to `root` (hex) in a tree of
    /// `count` leaves (RFC 9162, 2.1.3.2).
    pub fn verify(&self, leaf: &Leaf, root: &str, count: u32) -> Result<(), MigrationError> {
        let bad = |why: &str| MigrationError::Manifest(format!("record {}: {why}", leaf.key_id));
        if self.count != count || self.index >= count {
            return Err(bad("its proof is for another tree"));
        }
        let (mut f_n, mut s_n) = (self.index as u64, count as u64 - 1);
        let mut r = leaf.hash();
        for h in &self.path {
            let h: [u8; 32] = hex::decode(h).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| bad("a proof hash is not 32 bytes"))?;
            if s_n == 0 {
                return Err(bad("its proof is too long"));
            }
            if f_n & 1 == 1 || f_n == s_n {
                r = node(&h, &r);
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            } else {
                r = node(&r, &h);
            }
            f_n >>= 1;
            s_n >>= 1;
        }
        if s_n != 0 || hex::encode(r) != root {
            return Err(bad("it is not in the approved manifest (changed, or never approved)"));
        }
        Ok(())
    }
}

/// What a migrated record carries (its `migration` field, JSON): the
/// statement (as approved, its canonical text), the approvals, the record's
/// leaf in the manifest and the proof that leads from it to the root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationProof {
    pub statement: String,
    pub approvals: Vec<Approval>,
    pub leaf: Leaf,
    pub proof: Proof,
}

/// The most bytes a record's `migration` field may hold.
pub const MAX_PROOF: usize = 64 * 1024;

/// `nekms:migration` of a record migrated by `statement` as `leaf`.
pub fn context_value(statement: &[u8], leaf: &Leaf) -> String {
    format!("{}.{}", sha256_hex(statement), hex::encode(leaf.hash()))
}

impl MigrationProof {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a proof serialises")
    }

    pub fn parse(bytes: &[u8]) -> Result<MigrationProof, MigrationError> {
        if bytes.len() > MAX_PROOF {
            return Err(MigrationError::Manifest(format!("a migration proof of {} bytes, more than {MAX_PROOF}", bytes.len())));
        }
        serde_json::from_slice(bytes).map_err(|e| MigrationError::Manifest(format!("the record's migration proof: {e}")))
    }
}

/// Check a migrated record's approval against this image's approvers and
/// threshold, and `trusts` (whether this image trusts the images a target
/// names): the statement, the binding of the approval into the record's
/// context, the leaf (this record's id, spec and public key; an imported
/// first origin only if `allow_imported`), the proof to the approved root,
/// the target (this record's KMS key, images this one trusts) and the
/// quorum. The origin document (from the source image) is checked by the
/// caller against the returned statement.
pub fn verify_migrated(
    record: &crate::KeyRecord,
    approvers: &[Vec<u8>],
    threshold: usize,
    trusts: impl Fn(&Images) -> bool,
    allow_imported: bool,
) -> Result<(Statement, MigrationProof), MigrationError> {
    let bad = |why: String| MigrationError::Manifest(format!("record {}: {why}", record.key_id));
    let proof = MigrationProof::parse(record.migration.as_deref().ok_or_else(|| bad("no migration proof".into()))?)?;
    let statement = Statement::parse(proof.statement.as_bytes())?;
    let bound = record.encryption_context.get(nekms_protocol::context::MIGRATION).map(String::as_str);
    if bound != Some(context_value(proof.statement.as_bytes(), &proof.leaf).as_str()) {
        return Err(bad("its data key's context does not bind this approval".into()));
    }
    let leaf = &proof.leaf;
    if leaf.key_id != record.key_id || leaf.spec != record.spec.as_str() || leaf.spki_sha256 != sha256_hex(&record.public_key) {
        return Err(bad("its manifest leaf is another key's".into()));
    }
    match leaf.first_origin.as_str() {
        "generated" => {}
        "imported" if allow_imported => {}
        "imported" => return Err(bad("it was first imported, and imports are not accepted".into())),
        other => return Err(bad(format!("a first origin {other:?}"))),
    }
    proof.proof.verify(leaf, &statement.records.root, statement.records.count)?;
    if statement.target.custody_kms_key != record.kms_key_id {
        return Err(bad(format!("the approval moves records to {}, not {}", statement.target.custody_kms_key, record.kms_key_id)));
    }
    if !trusts(&statement.target.trust) {
        return Err(bad("the approval names target images this image does not trust".into()));
    }
    if !trusts(&statement.source.enclave) {
        return Err(bad("the source image that re-sealed it is not one this image trusts (origin-pcr0, origin-pcr8)".into()));
    }
    check_quorum(proof.statement.as_bytes(), &proof.approvals, approvers, threshold)?;
    Ok((statement, proof))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> Statement {
        Statement {
            version: 1,
            kind: KIND.into(),
            expires: "2026-12-20T00:00:00Z".into(),
            nonce: B64.encode([7u8; 32]),
            records: RecordSet { count: 3, root: "ab".repeat(32) },
            source: Source {
                custody_kms_key: "arn:aws:kms:us-east-1:111122223333:key/src".into(),
                enclave: Images { pcr0: vec![], pcr8: vec!["5a".repeat(48)] },
            },
            target: Target {
                custody_kms_key: "arn:aws:kms:us-east-1:111122223333:key/dst".into(),
                roles: Roles {
                    admin: "arn:aws:iam::111122223333:role/nekms-key-admin".into(),
                    instance: "arn:aws:iam::111122223333:role/nekms-instance".into(),
                },
                policy_sha256: "cd".repeat(32),
                trust: Images { pcr0: vec![], pcr8: vec!["0f".repeat(48)] },
                window_until: Some("2026-12-20T00:00:00Z".into()),
            },
        }
    }

    #[test]
    fn a_statement_has_one_byte_form() {
        let bytes = statement().to_bytes().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(r#"{"expires":"2026-12-20T00:00:00Z","kind":"nekms-migration","nonce":"#), "{text}");
        assert_eq!(Statement::parse(&bytes).unwrap(), statement());
        let pretty = serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()).unwrap();
        let reordered = text.replacen(
            r#"{"expires":"2026-12-20T00:00:00Z","kind":"nekms-migration","#,
            r#"{"kind":"nekms-migration","expires":"2026-12-20T00:00:00Z","#,
            1,
        );
        let extra = text.replacen('{', r#"{"extra":1,"#, 1);
        let null_window = text.replace(r#","window_until":"2026-12-20T00:00:00Z""#, r#","window_until":null"#);
        let escaped = text.replace("nekms-migration", "nekms\\u002dmigration");
        for bad in [
            pretty,
            reordered.into_bytes(),
            extra.into_bytes(),
            null_window.into_bytes(),
            escaped.into_bytes(),
            vec![b' '; MAX_STATEMENT + 1],
        ] {
            assert!(matches!(Statement::parse(&bad), Err(MigrationError::Statement(_))), "{}", String::from_utf8_lossy(&bad));
        }
        let mut s = statement();
        s.target.custody_kms_key = s.source.custody_kms_key.clone();
        assert!(s.to_bytes().is_err());
        let mut s = statement();
        s.target.trust.pcr8 = vec!["00".repeat(48)];
        assert!(s.to_bytes().is_err());
        for (admin, instance) in [
            ("arn:aws:iam::111122223333:role/nekms-instance", "arn:aws:iam::111122223333:role/nekms-instance"),
            ("*", "arn:aws:iam::111122223333:role/nekms-instance"),
            ("arn:aws:iam::111122223333:root", "arn:aws:iam::111122223333:role/nekms-instance"),
            ("arn:aws:iam::444455556666:role/admin", "arn:aws:iam::111122223333:role/nekms-instance"),
            ("arn:aws:iam::111122223333:role/*", "arn:aws:iam::111122223333:role/nekms-instance"),
        ] {
            let mut s = statement();
            s.target.roles = Roles { admin: admin.into(), instance: instance.into() };
            assert!(s.to_bytes().is_err(), "{admin} {instance}");
        }
    }

    #[test]
    fn proofs_lead_to_the_root_for_every_size_and_only_for_their_leaf() {
        for n in 1..=17usize {
            let leaves: Vec<Leaf> = (0..n)
                .map(|i| Leaf {
                    key_id: format!("k{i:02}"),
                    source_record_sha256: "11".repeat(32),
                    first_origin: "generated".into(),
                    spec: "ed25519".into(),
                    spki_sha256: format!("{i:02}").repeat(32),
                })
                .collect();
            let m = Manifest::new(leaves.clone()).unwrap();
            let root = m.root();
            for leaf in &leaves {
                let proof = m.proof(&leaf.key_id).unwrap();
                proof.verify(leaf, &root, n as u32).unwrap();
                let mut changed = leaf.clone();
                changed.first_origin = "imported".into();
                assert!(proof.verify(&changed, &root, n as u32).is_err(), "{n} {}", leaf.key_id);
                assert!(proof.verify(leaf, &root, n as u32 + 1).is_err());
                if n > 1 {
                    let mut short = proof.clone();
                    short.path.pop();
                    assert!(short.verify(leaf, &root, n as u32).is_err());
                    let mut moved = proof.clone();
                    moved.index = (proof.index + 1) % n as u32;
                    assert!(moved.verify(leaf, &root, n as u32).is_err());
                }
            }
        }
        let twice = vec![
            Leaf {
                key_id: "a".into(),
                source_record_sha256: String::new(),
                first_origin: String::new(),
                spec: String::new(),
                spki_sha256: String::new()
            };
            2
        ];
        assert!(Manifest::new(twice).is_err());
    }

    #[test]
    fn a_quorum_counts_each_listed_approver_once() {
        let bytes = statement().to_bytes().unwrap();
        let keys: Vec<PrivateKey> = [(KeySpec::Ed25519, 1u8), (KeySpec::P256, 2), (KeySpec::Ed25519, 3)]
            .iter()
            .map(|(spec, seed)| PrivateKey::generate(*spec, &[*seed; 32]).unwrap())
            .collect();
        let approvers: Vec<Vec<u8>> = keys.iter().map(|k| k.public_key().spki().to_vec()).collect();
        let a: Vec<Approval> = keys.iter().map(|k| approve(&bytes, k).unwrap()).collect();
        assert_eq!(check_quorum(&bytes, &a[..2], &approvers, 2).unwrap().len(), 2);
        let err = check_quorum(&bytes, &[a[0].clone(), a[0].clone()], &approvers, 2).unwrap_err();
        assert!(matches!(err, MigrationError::Quorum { valid: 1, needed: 2, .. }), "{err}");
        // Another statement: the same signatures count for nothing.
        let mut other = statement();
        other.target.trust.pcr8 = vec!["1f".repeat(48)];
        let other = other.to_bytes().unwrap();
        assert!(matches!(check_quorum(&other, &a, &approvers, 1), Err(MigrationError::Quorum { valid: 0, .. })));
        // An outsider's approval is reported, not counted.
        let outsider = approve(&bytes, &PrivateKey::generate(KeySpec::P256, &[9; 32]).unwrap()).unwrap();
        let err = check_quorum(&bytes, &[a[0].clone(), outsider], &approvers, 2).unwrap_err().to_string();
        assert!(err.contains("rule migration-quorum") && err.contains("is not an approver"), "{err}");
        assert!(approve(&bytes, &PrivateKey::generate(KeySpec::P384, &[4; 32]).unwrap()).is_err());
        assert!(check_quorum(&bytes, &a, &approvers, 0).is_err());
    }
}

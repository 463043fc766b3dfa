//! Moving custody to another KMS key under a quorum ([`nekms_keys::migration`]):
//! the checks the running (source) enclave makes before it seals anything
//! under the target. Each refusal names its rule:
//!
//! - `migration-disabled`: the measured configuration names no approvers;
//! - `migration-statement`: not the canonical form, or malformed;
//! - `migration-expired`: the NSM's time is past `expires`, or `expires` is
//!   more than 30 days away;
//! - `migration-replay`: a nonce this boot never issued, or one expired;
//! - `migration-source`: a source key not pinned here, or a source image
//!   that is not this one;
//! - `migration-quorum`: fewer valid approvals than the threshold;
//! - `migration-target-key`: the target is pinned here, in another region,
//!   not an enabled single-Region AWS_KMS symmetric key, or has grants;
//! - `migration-target-pcr`: the target's policy is nekms's template, but
//!   for images other than the statement's;
//! - `migration-target-policy`: anything else about the target's policy
//!   (the enclave reads it itself and rebuilds the template from it).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_keys::context::{self, is_reserved};
use nekms_keys::migration::{self, Statement};
use nekms_keys::record::binding_context;
use nekms_keys::{KeyRecord, Origin, RecordExt};
use nekms_kms_client::DataKeySpec;
use nekms_kms_policy::templates::{self, ImageTrust, MigrationWindow, Roles};
use nekms_rpc::{Approval, MigrateItem, MigrateRequest, MigrateResponse, MigrationCheck, RpcError};
use serde_json::Value;

use crate::rpc::{kms_error, nsm_error};
use crate::trust::KmsKeyArn;
use crate::Enclave;

/// How long a nonce may be used.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// The furthest `expires` may be from the NSM's time.
pub const MAX_EXPIRY: u64 = 30 * 24 * 3600;
/// Nonces kept at once.
const MAX_NONCES: usize = 64;
/// Records re-sealed in one call.
pub const MAX_BATCH: usize = 32;

/// When a nonce was issued, and the manifest leaves re-sealed under it.
type Issued = (Instant, HashSet<[u8; 32]>);

/// The approvers and threshold from the measured configuration, and the
/// nonces this boot issued.
pub struct Migrations {
    approvers: Vec<Vec<u8>>,
    threshold: usize,
    /// Issued nonces: when, and the leaves re-sealed under each.
    nonces: Mutex<HashMap<[u8; 32], Issued>>,
}

fn refused(rule: &str, message: impl std::fmt::Display) -> RpcError {
    RpcError::refused(format!("rule {rule}: {message}"))
}

impl Migrations {
    /// From `migration-approvers` (base64 SPKI, Ed25519 or P-256) and `migration-threshold`.
    pub fn new(approvers: &[String], threshold: Option<usize>) -> Result<Migrations, String> {
        let approvers = approvers
            .iter()
            .map(|a| {
                let der = B64.decode(a).map_err(|_| format!("migration-approvers: {a:?} is not base64 of a SubjectPublicKeyInfo"))?;
                migration::check_approver(&der).map_err(|e| format!("migration-approvers: {e}"))?;
                Ok(der)
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut distinct = approvers.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() != approvers.len() {
            return Err("migration-approvers names one key twice".into());
        }
        let threshold = match (approvers.len(), threshold) {
            (0, None) => 0,
            (0, Some(_)) => return Err("migration-threshold without migration-approvers".into()),
            (_, None) => return Err("migration-approvers without migration-threshold".into()),
            (n, Some(t)) if t == 0 || t > n => return Err(format!("migration-threshold {t}: 1 to {n}, the number of approvers")),
            (_, Some(t)) => t,
        };
        Ok(Migrations { approvers, threshold, nonces: Mutex::new(HashMap::new()) })
    }

    /// The approvers (SPKI DER) and the threshold.
    pub fn approvers(&self) -> (Vec<Vec<u8>>, usize) {
        (self.approvers.clone(), self.threshold)
    }

    /// The approvers' ids and the threshold, for Describe.
    pub fn summary(&self) -> (Vec<String>, usize) {
        (self.approvers.iter().map(|a| migration::approver_id(a)).collect(), self.threshold)
    }

    fn enabled(&self) -> Result<(), RpcError> {
        if self.approvers.is_empty() {
            return Err(refused("migration-disabled", "this enclave's measured configuration names no migration-approvers"));
        }
        Ok(())
    }

    fn issue(&self) -> Result<[u8; 32], RpcError> {
        let mut nonce = [0u8; 32];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| RpcError::new(nekms_rpc::ErrorCode::Internal, "the random generator failed"))?;
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        nonces.retain(|_, (issued, _)| issued.elapsed() < NONCE_LIFETIME);
        if nonces.len() >= MAX_NONCES {
            return Err(refused("migration-replay", format!("{MAX_NONCES} nonces are outstanding; use or let them expire")));
        }
        nonces.insert(nonce, (Instant::now(), HashSet::new()));
        Ok(nonce)
    }

    /// Spend a nonce: nothing more is re-sealed under its statement.
    fn spend(&self, encoded: &str) -> Result<(), RpcError> {
        self.check_nonce(encoded)?;
        let nonce: [u8; 32] = B64.decode(encoded).ok().and_then(|n| n.try_into().ok()).expect("checked");
        self.nonces.lock().unwrap_or_else(|p| p.into_inner()).remove(&nonce);
        Ok(())
    }

    /// Whether `leaf` was re-sealed under the statement with `encoded`'s nonce
    /// (refused if so); with `mark`, record that it now is.
    fn resealed(&self, encoded: &str, leaf: [u8; 32], mark: bool) -> Result<(), RpcError> {
        let nonce: [u8; 32] =
            B64.decode(encoded).ok().and_then(|n| n.try_into().ok()).ok_or_else(|| refused("migration-replay", "a malformed nonce"))?;
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        let (_, done) = nonces.get_mut(&nonce).ok_or_else(|| refused("migration-replay", "the statement's nonce is spent"))?;
        let already = if mark { !done.insert(leaf) } else { done.contains(&leaf) };
        if already {
            return Err(refused("migration-replay", "this record was already re-sealed under this statement"));
        }
        Ok(())
    }

    fn check_nonce(&self, encoded: &str) -> Result<(), RpcError> {
        let nonce: [u8; 32] =
            B64.decode(encoded).ok().and_then(|n| n.try_into().ok()).ok_or_else(|| refused("migration-replay", "a malformed nonce"))?;
        let nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        match nonces.get(&nonce) {
            Some((issued, _)) if issued.elapsed() < NONCE_LIFETIME => Ok(()),
            _ => Err(refused("migration-replay", "the statement's nonce was not issued by this boot of the enclave, or has expired")),
        }
    }
}

/// The custody template the statement's target names, for `roles`.
fn expected_policy(roles: &Roles, s: &Statement) -> Result<Value, RpcError> {
    let trust = ImageTrust { pcr0: s.target.trust.pcr0.clone(), pcr8: s.target.trust.pcr8.clone() };
    match &s.target.window_until {
        None => Ok(templates::custody_for(roles, &trust)),
        Some(until) => {
            if !trust.pcr0.is_empty() || s.source.enclave.pcr8.is_empty() {
                return Err(refused("migration-statement", "a migration window is from a signer (PCR8) to signers (PCR8)"));
            }
            let window = MigrationWindow { from_pcr8: s.source.enclave.pcr8.clone(), until: until.clone() };
            Ok(templates::migration_target(roles, &trust, &window))
        }
    }
}

impl Enclave {
    pub async fn migrate_call(&self, request: MigrateRequest) -> Result<MigrateResponse, RpcError> {
        self.migrations.enabled()?;
        match request {
            MigrateRequest::Begin => {
                let nonce = self.migrations.issue()?;
                let expires = self.nsm_time()? + NONCE_LIFETIME.as_secs();
                Ok(MigrateResponse::Begun { nonce: nonce.to_vec(), expires })
            }
            MigrateRequest::Check { statement, approvals } => {
                Ok(MigrateResponse::Checked(self.check_migration(&statement, &approvals).await?.1))
            }
            MigrateRequest::Records { statement, approvals, records } => {
                if records.len() > MAX_BATCH {
                    return Err(RpcError::bad_request(format!("at most {MAX_BATCH} records a call")));
                }
                let (s, _) = self.check_migration(&statement, &approvals).await?;
                let mut out = Vec::with_capacity(records.len());
                for item in records {
                    out.push(self.migrate_record(&statement, &approvals, &s, item).await?);
                }
                Ok(MigrateResponse::Migrated { records: out })
            }
            MigrateRequest::Finish { statement } => {
                let s = Statement::parse(&statement).map_err(|e| RpcError::refused(e.to_string()))?;
                self.migrations.spend(&s.nonce)?;
                Ok(MigrateResponse::Finished)
            }
        }
    }

    /// Re-seal one source record under the target, after every check: the
    /// record is under the source key and is the approved leaf, it opens
    /// under all of today's rules, and KMS answers for the target itself.
    async fn migrate_record(&self, bytes: &[u8], approvals: &[Approval], s: &Statement, item: MigrateItem) -> Result<KeyRecord, RpcError> {
        let record = item.record;
        let id = record.key_id.clone();
        let manifest = |why: String| RpcError::refused(format!("rule migration-manifest: record {id}: {why}"));
        if record.kms_key_id != s.source.custody_kms_key {
            return Err(manifest(format!("it is under {}, not the statement's source key", record.kms_key_id)));
        }
        if item.proof.len() > 16 * 1024 {
            return Err(manifest("an oversized proof".into()));
        }
        let proof: migration::Proof = serde_json::from_slice(&item.proof).map_err(|e| manifest(format!("its proof: {e}")))?;
        // Every rule a Sign applies, provenance included, before anything is read from the record's approval (the
        // cache is keyed by a digest that covers the approval, so a hit is this very record, checked before).
        let private = self.open(&record).await?;
        // A record migrated before carries its first origin through.
        let first_origin = match record.origin {
            Origin::Migrated => {
                let earlier = migration::MigrationProof::parse(record.migration.as_deref().unwrap_or_default())
                    .map_err(|e| manifest(e.to_string()))?;
                earlier.leaf.first_origin
            }
            other => other.as_str().to_owned(),
        };
        let leaf = migration::Leaf {
            key_id: record.key_id.clone(),
            source_record_sha256: hex::encode(record.cache_digest()),
            first_origin,
            spec: record.spec.as_str().to_owned(),
            spki_sha256: migration::sha256_hex(&record.public_key),
        };
        proof.verify(&leaf, &s.records.root, s.records.count).map_err(|e| RpcError::refused(e.to_string()))?;
        // Each approved record is re-sealed once per statement (marked once sealed, so a KMS failure can be retried).
        let leaf_hash = leaf.hash();
        self.migrations.resealed(&s.nonce, leaf_hash, false)?;

        // The new record's context: the caller's entries and usage kept, origin migrated, the approval bound.
        let extra: BTreeMap<String, String> =
            record.encryption_context.iter().filter(|(k, _)| !is_reserved(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut ctx =
            binding_context(&record.key_id, record.spec, Origin::Migrated, &extra).map_err(|e| RpcError::refused(e.to_string()))?;
        if let Some(u) = record.encryption_context.get(context::USAGE) {
            ctx.insert(context::USAGE.into(), u.clone());
        }
        ctx.insert(context::MIGRATION.into(), migration::context_value(bytes, &leaf));
        let target: KmsKeyArn = s.target.custody_kms_key.parse().map_err(|e| refused("migration-target-key", e))?;
        let data_key = self.kms.generate_data_key(target.as_str(), Some(DataKeySpec::Aes256), None, &ctx).await.map_err(kms_error)?;
        self.trust.check_answered(&target, &data_key.key_id)?;
        let carried = migration::MigrationProof {
            statement: String::from_utf8_lossy(bytes).into_owned(),
            approvals: approvals.to_vec(),
            leaf,
            proof,
        };
        let sealed = self.seal_new(&private, &record.key_id, (ctx, data_key), Origin::Migrated, None, Some(carried.to_bytes()))?;
        self.migrations.resealed(&s.nonce, leaf_hash, true)?;
        Ok(sealed)
    }

    /// The NSM's time (a fresh document's timestamp: the hypervisor's
    /// clock, not the parent's), seconds since the Unix epoch.
    fn nsm_time(&self) -> Result<u64, RpcError> {
        let doc = self.nsm.attestation(nekms_nsm::AttestationRequest::default()).map_err(nsm_error)?;
        let cose = nekms_attestation::CoseSign1::decode(&doc)
            .map_err(|e| RpcError::new(nekms_rpc::ErrorCode::Internal, format!("the NSM's document: {e}")))?;
        let parsed = nekms_attestation::AttestationDocument::decode(&cose.payload)
            .map_err(|e| RpcError::new(nekms_rpc::ErrorCode::Internal, format!("the NSM's document: {e}")))?;
        Ok(parsed.timestamp / 1000)
    }

    /// Everything checked before anything is sealed under the target.
    pub async fn check_migration(&self, bytes: &[u8], approvals: &[Approval]) -> Result<(Statement, MigrationCheck), RpcError> {
        let s = Statement::parse(bytes).map_err(|e| RpcError::refused(e.to_string()))?;
        let now = self.nsm_time()?;
        let expires = s.expires_at();
        if expires <= now as i64 || expires as u64 > now + MAX_EXPIRY {
            return Err(refused(
                "migration-expired",
                format!(
                    "the statement expires {}; the NSM's time is {}, and approvals last at most 30 days",
                    s.expires,
                    migration::format_utc(now as i64).unwrap_or_default()
                ),
            ));
        }
        self.migrations.check_nonce(&s.nonce)?;

        // The source: a key pinned here, and this image.
        if !self.trust.custody_keys().iter().any(|k| k.as_str() == s.source.custody_kms_key) {
            return Err(refused(
                "migration-source",
                format!("{} is not a custody key pinned in this enclave's configuration", s.source.custody_kms_key),
            ));
        }
        let own = |i: u16| self.nsm.describe_pcr(i).map(|p| p.value.to_hex()).map_err(nsm_error);
        let (pcr0, pcr8) = (own(0)?, own(8)?);
        let source_is_me = match (&s.source.enclave.pcr0[..], &s.source.enclave.pcr8[..]) {
            ([p], []) => *p == pcr0,
            ([], [p]) => *p == pcr8,
            ([p0], [p8]) => *p0 == pcr0 && *p8 == pcr8,
            _ => false,
        };
        if !source_is_me {
            return Err(refused("migration-source", format!("the statement's source image is not this one (PCR0 {pcr0}, PCR8 {pcr8})")));
        }

        let approvers = migration::check_quorum(bytes, approvals, &self.migrations.approvers, self.migrations.threshold)
            .map_err(|e| RpcError::refused(e.to_string()))?;

        // The target, as KMS tells the enclave itself.
        let target: KmsKeyArn = s.target.custody_kms_key.parse().map_err(|e| refused("migration-target-key", e))?;
        if self.trust.custody_keys().contains(&target) {
            return Err(refused("migration-target-key", format!("{target} is already pinned here")));
        }
        if Some(target.region()) != self.trust.region() {
            return Err(refused("migration-target-key", format!("{target} is not in the custody keys' region")));
        }
        let facts = self.kms.key_facts(target.as_str()).await.map_err(kms_error)?;
        self.trust.check_answered(&target, &facts.arn).map_err(|e| refused("migration-target-key", e.message))?;
        let plain = facts.key_spec == "SYMMETRIC_DEFAULT" && facts.origin == "AWS_KMS" && facts.key_state == "Enabled";
        if !plain || facts.multi_region || facts.custom_key_store || facts.grants != 0 {
            return Err(refused(
                "migration-target-key",
                format!(
                    "{target} must be an enabled single-Region AWS_KMS symmetric key outside custom key stores with no grants; it is {} {} {}{}{}, {} grant(s)",
                    facts.key_state,
                    facts.origin,
                    facts.key_spec,
                    if facts.multi_region { " multi-Region" } else { "" },
                    if facts.custom_key_store { " in a custom key store" } else { "" },
                    facts.grants
                ),
            ));
        }
        nekms_kms_policy::check_unique_keys(&facts.policy).map_err(|e| refused("migration-target-policy", e))?;
        let policy: Value =
            serde_json::from_str(&facts.policy).map_err(|e| refused("migration-target-policy", format!("not JSON: {e}")))?;
        let policy_sha256 = migration::policy_sha256(&policy);
        // The roles the approvers saw in the statement, never ones read from the policy itself.
        let roles = Roles { instance: s.target.roles.instance.clone(), admin: s.target.roles.admin.clone() };
        if policy != expected_policy(&roles, &s)? {
            // nekms's template, but for other images?
            let mut other = s.clone();
            let allow = &policy["Statement"][0]["Condition"]["StringEqualsIgnoreCase"];
            let values =
                |k: &str| allow[k].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()).unwrap_or_default();
            other.target.trust.pcr0 = values("kms:RecipientAttestation:ImageSha384");
            other.target.trust.pcr8 = values("kms:RecipientAttestation:PCR8");
            if expected_policy(&roles, &other).is_ok_and(|p| p == policy) {
                return Err(refused("migration-target-pcr", format!("{target}'s policy trusts other images than the statement names")));
            }
            return Err(refused(
                "migration-target-policy",
                format!("{target}'s policy is not exactly nekms's custody template for the statement's images"),
            ));
        }
        if policy_sha256 != s.target.policy_sha256 {
            return Err(refused(
                "migration-target-policy",
                format!("{target}'s policy is not the one the approvers saw (SHA-256 {policy_sha256})"),
            ));
        }
        let check = MigrationCheck {
            approvers,
            threshold: self.migrations.threshold as u32,
            checked_at: now,
            target_key: facts.arn,
            target_policy_sha256: policy_sha256,
        };
        Ok((s, check))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nekms_keys::{KeySpec, PrivateKey};

    #[test]
    fn the_measured_approvers_and_threshold_are_checked_at_start() {
        let spki = |spec, seed| B64.encode(PrivateKey::generate(spec, &[seed; 32]).unwrap().public_key().spki());
        let (a, b) = (spki(KeySpec::Ed25519, 1), spki(KeySpec::P256, 2));
        let m = Migrations::new(&[a.clone(), b.clone()], Some(2)).unwrap();
        assert_eq!(m.summary().1, 2);
        assert!(Migrations::new(&[], None).unwrap().enabled().unwrap_err().message.contains("migration-disabled"));
        for (approvers, threshold) in [
            (vec![a.clone(), b.clone()], Some(3)),
            (vec![a.clone(), b.clone()], Some(0)),
            (vec![a.clone()], None),
            (vec![], Some(1)),
            (vec![a.clone(), a.clone()], Some(1)),
            (vec![spki(KeySpec::P384, 3)], Some(1)),
            (vec!["not base64!".into()], Some(1)),
        ] {
            assert!(Migrations::new(&approvers, threshold).is_err(), "{approvers:?} {threshold:?}");
        }
        // Nonces: issued ones pass, others do not.
        let nonce = m.issue().unwrap();
        assert!(m.check_nonce(&B64.encode(nonce)).is_ok());
        assert!(m.check_nonce(&B64.encode([0u8; 32])).unwrap_err().message.contains("migration-replay"));
        assert!(m.check_nonce("short").is_err());
        // Each leaf once per statement; a spent nonce re-seals nothing.
        let encoded = B64.encode(nonce);
        m.resealed(&encoded, [1; 32], false).unwrap();
        m.resealed(&encoded, [1; 32], true).unwrap();
        assert!(m.resealed(&encoded, [1; 32], false).unwrap_err().message.contains("already re-sealed"));
        m.resealed(&encoded, [2; 32], false).unwrap();
        m.spend(&encoded).unwrap();
        assert!(m.resealed(&encoded, [2; 32], false).unwrap_err().message.contains("spent"));
    }
}

//! The enclave's rules: what it trusts, and what it refuses to do for the
//! parent.
//!
//! KMS cannot tell "the enclave opening a record to sign" from "the enclave
//! decrypting something for the parent": both are a Decrypt with a Recipient
//! carrying the same PCRs. So the enclave holds the line itself:
//!
//! - **pinned-kms-key**: custody seals under, and opens from, only the KMS
//!   keys its measured configuration names (full ARNs), and checks the ARN
//!   KMS answers with. Parent-supplied key ids, credentials or regions can
//!   make custody fail, never seal under a key the parent can decrypt.
//! - **reserved-context**: every path that returns plaintext to a caller
//!   refuses encryption-context keys in the `nekms:` namespace, in any
//!   casing ([`nekms_keys::context`]), and refuses ciphertexts under a
//!   custody key whatever their context.
//! - **parent-decrypt**: the configuration can turn those paths off, or
//!   limit them to listed KMS keys; with custody keys pinned they are off
//!   unless the configuration turns them on.
//! - **import-disabled**: ImportKey, and opening imported records, only when
//!   the configuration allows imports.
//! - **provenance**: a record is opened only if its origin document verifies
//!   (chain to the pinned root at the document's time), was made by this
//!   image or one the configuration trusts (PCR0: `origin-pcr0`), or, with
//!   `custody-trust = "pcr8"` or `origin-pcr8`, by an image of a trusted
//!   signer (PCR8), carries no public key,
//!   and its user_data is exactly the record's origin commitment.
//! - **attest-own-keys**: documents for callers never carry a caller's
//!   public key, and their user_data always starts `nekms-caller:v1:`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use nekms_attestation::{Pcr48, Verifier};
use nekms_keys::context::check_caller_context;
use nekms_keys::origin::TrustedImages;
use nekms_keys::KeyRecord;
use nekms_rpc::{ErrorCode, RpcError};

use crate::config::TrustArgs;

/// A KMS key ARN: `arn:PARTITION:kms:REGION:ACCOUNT:key/ID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsKeyArn {
    arn: String,
    region: String,
    account: String,
    key_id: String,
}

impl FromStr for KmsKeyArn {
    type Err = String;
    fn from_str(s: &str) -> Result<KmsKeyArn, String> {
        let parts: Vec<&str> = s.splitn(6, ':').collect();
        let bad = || format!("{s:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID); pin keys by ARN, never by alias");
        let [arn, partition, service, region, account, resource] = parts[..] else { return Err(bad()) };
        let key_id = resource.strip_prefix("key/").ok_or_else(bad)?;
        if key_id.starts_with("mrk-") {
            return Err(format!(
                "{s:?} is a multi-Region key: a replica in another Region could be given another policy; pin a single-Region key"
            ));
        }
        let ok = arn == "arn"
            && partition.starts_with("aws")
            && service == "kms"
            && !region.is_empty()
            && region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && account.len() == 12
            && account.chars().all(|c| c.is_ascii_digit())
            && !key_id.is_empty()
            && key_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(bad());
        }
        Ok(KmsKeyArn { arn: s.to_owned(), region: region.to_owned(), account: account.to_owned(), key_id: key_id.to_owned() })
    }
}

impl KmsKeyArn {
    pub fn as_str(&self) -> &str {
        &self.arn
    }
    pub fn region(&self) -> &str {
        &self.region
    }
    pub fn account(&self) -> &str {
        &self.account
    }
    /// Whether a caller's `id` (an ARN or a bare key id) names this key.
    fn named_by(&self, id: &str) -> bool {
        id == self.arn || id == self.key_id
    }
}

impl fmt::Display for KmsKeyArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

/// What the enclave trusts, fixed at start from its measured configuration.
pub struct Trust {
    custody: Vec<KmsKeyArn>,
    /// This image's PCR0 first, then the configured others; the trusted
    /// signers (this image's own first under `custody-trust = "pcr8"`).
    origin: TrustedImages,
    by_signer: bool,
    parent_decrypt: bool,
    parent_decrypt_keys: Vec<KmsKeyArn>,
    allow_import: bool,
    verifier: Verifier,
}

fn refused(message: String) -> RpcError {
    RpcError::refused(message)
}

fn rejected(message: String) -> RpcError {
    RpcError::new(ErrorCode::RecordRejected, message)
}

impl Trust {
    /// Parse the settings; `own` is this enclave's PCR0 and PCR8, `verifier`
    /// trusts the root origin documents must chain to. `simulated`: a
    /// development NSM, whose debug mode (zero PCRs) may still run custody
    /// for tests.
    pub fn new(args: &TrustArgs, own: (Pcr48, Pcr48), verifier: Verifier, simulated: bool) -> Result<Trust, String> {
        let (own_pcr0, own_pcr8) = own;
        let arns = |list: &[String], what: &str| -> Result<Vec<KmsKeyArn>, String> {
            list.iter().map(|s| s.parse::<KmsKeyArn>().map_err(|e| format!("{what}: {e}"))).collect()
        };
        let custody = arns(&args.custody_kms_keys, "custody-kms-keys")?;
        if let Some(k) = custody.iter().find(|k| k.region != custody[0].region) {
            return Err(format!(
                "custody-kms-keys: {k} is in {}, {} in {}; custody keys share one region",
                k.region, custody[0], custody[0].region
            ));
        }
        let mut origin_pcr0 = vec![own_pcr0];
        for hex in &args.origin_pcr0 {
            origin_pcr0.push(hex.parse::<Pcr48>().map_err(|e| format!("origin-pcr0 {hex:?}: {e}"))?);
        }
        // A zero PCR0 is a debug-mode enclave: any debug image anywhere reports it.
        if !simulated && !custody.is_empty() && origin_pcr0.contains(&Pcr48::ZERO) {
            return Err("PCR0 is all zero (a debug-mode enclave, or origin-pcr0 naming one): every debug-mode image reports it, so custody is refused".into());
        }
        let by_signer = match args.custody_trust.as_deref() {
            None | Some("pcr0") => false,
            Some("pcr8") => true,
            Some(other) => {
                return Err(format!("custody-trust = {other:?}: say \"pcr0\" (this image) or \"pcr8\" (every image of its signer)"))
            }
        };
        let mut origin_pcr8 = Vec::new();
        if by_signer {
            // Zero is every unsigned image's PCR8.
            if own_pcr8.is_zero() {
                return Err("custody-trust = \"pcr8\", but this image is not signed (PCR8 is all zero): sign the image (nekms image build --sign-key/--sign-cert), or trust by image (\"pcr0\")".into());
            }
            origin_pcr8.push(own_pcr8);
        }
        for hex in &args.origin_pcr8 {
            let p = hex.parse::<Pcr48>().map_err(|e| format!("origin-pcr8 {hex:?}: {e}"))?;
            if p.is_zero() {
                return Err("origin-pcr8 names an all-zero PCR8, which every unsigned image reports".into());
            }
            origin_pcr8.push(p);
        }
        let parent_decrypt_keys = arns(&args.parent_decrypt_keys, "parent-decrypt-keys")?;
        if let Some(k) = parent_decrypt_keys.iter().find(|k| custody.contains(k)) {
            return Err(format!("parent-decrypt-keys names {k}, a custody key; custody keys never serve parent decryption"));
        }
        let parent_decrypt = args.parent_decrypt.unwrap_or(custody.is_empty());
        Ok(Trust {
            custody,
            origin: TrustedImages { pcr0: origin_pcr0, pcr8: origin_pcr8, allow_imported: args.allow_import, ..Default::default() },
            by_signer,
            parent_decrypt,
            parent_decrypt_keys,
            allow_import: args.allow_import,
            verifier,
        })
    }

    /// The region the custody keys imply, if any are pinned.
    pub fn region(&self) -> Option<&str> {
        self.custody.first().map(KmsKeyArn::region)
    }

    pub fn custody_keys(&self) -> &[KmsKeyArn] {
        &self.custody
    }

    pub fn origin_pcr0(&self) -> &[Pcr48] {
        &self.origin.pcr0
    }

    /// The measured migration approvers and threshold: migrated records are
    /// accepted only with their approval ([`crate::migrate`]).
    pub fn set_migration_approvers(&mut self, approvers: Vec<Vec<u8>>, threshold: usize) {
        self.origin.approvers = approvers;
        self.origin.threshold = threshold;
    }

    /// Whether this image trusts any of the images a migration targets.
    pub fn admits_any(&self, images: &nekms_keys::migration::Images) -> bool {
        self.origin.admits_any(images)
    }

    pub fn origin_pcr8(&self) -> &[Pcr48] {
        &self.origin.pcr8
    }

    /// `"pcr8"` when this image trusts its own signer's images, else `"pcr0"`.
    pub fn custody_trust(&self) -> &'static str {
        if self.by_signer {
            "pcr8"
        } else {
            "pcr0"
        }
    }

    pub fn parent_decrypt(&self) -> (bool, &[KmsKeyArn]) {
        (self.parent_decrypt, &self.parent_decrypt_keys)
    }

    /// ImportKey is offered only when the configuration allows imports.
    pub fn check_import(&self) -> Result<(), RpcError> {
        if self.allow_import {
            Ok(())
        } else {
            Err(refused("rule import-disabled: this enclave's configuration does not allow imports (allow-import = true)".into()))
        }
    }

    fn is_custody(&self, id: &str) -> bool {
        self.custody.iter().any(|k| k.named_by(id))
    }

    /// The pinned key a caller asks custody to use (absent: the only one).
    pub fn custody_key(&self, requested: Option<&str>) -> Result<&KmsKeyArn, RpcError> {
        match (requested, &self.custody[..]) {
            (_, []) => Err(refused(
                "rule pinned-kms-key: this enclave's configuration pins no custody KMS key (custody-kms-keys), so it makes and opens no key records".into(),
            )),
            (None, [only]) => Ok(only),
            (None, _) => Err(RpcError::bad_request(format!(
                "several custody KMS keys are pinned ({}); name one",
                self.custody.iter().map(KmsKeyArn::as_str).collect::<Vec<_>>().join(", ")
            ))),
            (Some(id), keys) => keys.iter().find(|k| k.named_by(id)).ok_or_else(|| {
                refused(format!(
                    "rule pinned-kms-key: {id:?} is not a custody KMS key pinned in this enclave's configuration ({}); aliases are not accepted",
                    keys.iter().map(KmsKeyArn::as_str).collect::<Vec<_>>().join(", ")
                ))
            }),
        }
    }

    /// KMS must answer with exactly the pinned ARN it was asked about.
    pub fn check_answered(&self, pinned: &KmsKeyArn, answered: &str) -> Result<(), RpcError> {
        if answered == pinned.as_str() {
            Ok(())
        } else {
            Err(refused(format!("rule pinned-kms-key: KMS answered for {answered:?}, not the pinned {pinned}; nothing was kept")))
        }
    }

    /// Before a plaintext-returning call for a caller.
    pub fn check_parent_request(&self, context: &BTreeMap<String, String>, key_id: Option<&str>) -> Result<(), RpcError> {
        if !self.parent_decrypt {
            return Err(refused(
                "rule parent-decrypt: this enclave's configuration turns off decryption for the parent (parent-decrypt = false)".into(),
            ));
        }
        check_caller_context(context).map_err(|e| refused(e.to_string()))?;
        if let Some(id) = key_id {
            if self.is_custody(id) {
                return Err(refused(format!(
                    "rule custody-key: {id} is a custody KMS key; nothing under it is ever decrypted for the parent"
                )));
            }
        }
        Ok(())
    }

    /// After KMS answered a plaintext-returning call for a caller, before the
    /// plaintext leaves: the key that released it.
    pub fn check_parent_answer(&self, answered: &str) -> Result<(), RpcError> {
        if answered.is_empty() {
            return Err(refused("rule custody-key: KMS did not say which key released this; nothing was returned".into()));
        }
        if self.is_custody(answered) {
            return Err(refused(format!("rule custody-key: the ciphertext is under {answered}, a custody KMS key; nothing under it is ever decrypted for the parent")));
        }
        if !self.parent_decrypt_keys.is_empty() && !self.parent_decrypt_keys.iter().any(|k| k.named_by(answered)) {
            return Err(refused(format!("rule parent-decrypt: {answered} is not among the keys this enclave's configuration lets the parent use (parent-decrypt-keys)")));
        }
        Ok(())
    }

    /// A record's KMS key is pinned, and its origin document is genuine, from
    /// a trusted image, and commits to exactly this record.
    pub fn check_record(&self, record: &KeyRecord) -> Result<&KmsKeyArn, RpcError> {
        let id = &record.key_id;
        let pinned = self.custody.iter().find(|k| k.as_str() == record.kms_key_id).ok_or_else(|| {
            rejected(format!(
                "rule pinned-kms-key: key record {id} is sealed under {}, which this enclave's configuration does not pin",
                record.kms_key_id
            ))
        })?;
        if record.origin == nekms_keys::Origin::Imported && !self.allow_import {
            return Err(rejected(format!(
                "rule import-disabled: key record {id} was imported, and this enclave's configuration does not allow imported keys"
            )));
        }
        nekms_keys::origin::verify_origin(record, &self.verifier, &self.origin).map_err(|e| rejected(e.to_string()))?;
        Ok(pinned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn trust(custody: &[&str]) -> Trust {
        let args = TrustArgs { custody_kms_keys: custody.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        Trust::new(&args, (Pcr48::ZERO, Pcr48::ZERO), Verifier::aws(), true).unwrap()
    }

    #[test]
    fn key_arns_are_parsed_strictly() {
        let k: KmsKeyArn = ARN.parse().unwrap();
        assert_eq!((k.region(), k.account()), ("eu-west-1", "111122223333"));
        for bad in [
            "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd",
            "alias/custody",
            "1234abcd",
            "arn:aws:kms:eu-west-1:111122223333:alias/x",
            "arn:aws:s3:eu-west-1:111122223333:key/x",
            "arn:aws:kms::111122223333:key/x",
        ] {
            assert!(bad.parse::<KmsKeyArn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn custody_uses_only_pinned_keys_and_their_answer() {
        let t = trust(&[ARN]);
        assert_eq!(t.custody_key(None).unwrap().as_str(), ARN);
        assert_eq!(t.custody_key(Some("1234abcd-12ab-34cd-56ef-1234567890ab")).unwrap().as_str(), ARN);
        assert_eq!(t.custody_key(Some("alias/custody")).unwrap_err().code, ErrorCode::Refused);
        assert_eq!(
            t.custody_key(Some("arn:aws:kms:eu-west-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab")).unwrap_err().code,
            ErrorCode::Refused
        );
        let pinned = t.custody_key(None).unwrap();
        assert!(t.check_answered(pinned, ARN).is_ok());
        assert!(t.check_answered(pinned, "arn:aws:kms:eu-west-1:111122223333:key/other").is_err());
        assert!(trust(&[]).custody_key(None).unwrap_err().message.contains("pins no custody"));
        assert_eq!(t.region(), Some("eu-west-1"));
    }

    #[test]
    fn the_parent_never_decrypts_under_custody_keys_or_reserved_contexts() {
        let t = Trust::new(
            &TrustArgs { custody_kms_keys: vec![ARN.into()], parent_decrypt: Some(true), ..Default::default() },
            (Pcr48::ZERO, Pcr48::ZERO),
            Verifier::aws(),
            true,
        )
        .unwrap();
        assert!(t.check_parent_answer("").is_err(), "an answer naming no key is refused");
        let ctx = |k: &str| BTreeMap::from([(k.to_owned(), "v".to_owned())]);
        assert!(t.check_parent_request(&ctx("app"), None).is_ok());
        for k in ["nekms:key-id", "NEKMS:KEY-ID", "Nekms:purpose"] {
            assert!(t.check_parent_request(&ctx(k), None).unwrap_err().message.contains("reserved-context"), "{k}");
        }
        assert!(t.check_parent_request(&BTreeMap::new(), Some(ARN)).unwrap_err().message.contains("custody-key"));
        assert!(t.check_parent_answer(ARN).unwrap_err().message.contains("custody-key"));
        assert!(t.check_parent_answer("arn:aws:kms:eu-west-1:111122223333:key/other").is_ok());
    }

    #[test]
    fn parent_decryption_can_be_turned_off_or_limited() {
        let other = "arn:aws:kms:eu-west-1:111122223333:key/other";
        let off = TrustArgs { parent_decrypt: Some(false), ..Default::default() };
        let t = Trust::new(&off, (Pcr48::ZERO, Pcr48::ZERO), Verifier::aws(), true).unwrap();
        assert!(t.check_parent_request(&BTreeMap::new(), None).unwrap_err().message.contains("parent-decrypt"));
        let listed = TrustArgs { parent_decrypt_keys: vec![other.into()], ..Default::default() };
        let t = Trust::new(&listed, (Pcr48::ZERO, Pcr48::ZERO), Verifier::aws(), true).unwrap();
        assert!(t.check_parent_answer(other).is_ok());
        assert!(t.check_parent_answer("arn:aws:kms:eu-west-1:111122223333:key/third").is_err());
        let both = TrustArgs { custody_kms_keys: vec![ARN.into()], parent_decrypt_keys: vec![ARN.into()], ..Default::default() };
        assert!(Trust::new(&both, (Pcr48::ZERO, Pcr48::ZERO), Verifier::aws(), true).is_err(), "a custody key never serves the parent");
        let mixed =
            TrustArgs { custody_kms_keys: vec![ARN.into(), "arn:aws:kms:us-east-1:111122223333:key/x".into()], ..Default::default() };
        assert!(Trust::new(&mixed, (Pcr48::ZERO, Pcr48::ZERO), Verifier::aws(), true).is_err());
    }

    #[test]
    fn custody_turns_parent_decryption_off_unless_configured_and_debug_images_are_refused() {
        let custody = TrustArgs { custody_kms_keys: vec![ARN.into()], ..Default::default() };
        let t = Trust::new(&custody, (Pcr48([1; 48]), Pcr48::ZERO), Verifier::aws(), false).unwrap();
        assert!(!t.parent_decrypt().0, "custody pinned: off by default");
        assert!(Trust::new(&TrustArgs::default(), (Pcr48([1; 48]), Pcr48::ZERO), Verifier::aws(), false).unwrap().parent_decrypt().0);
        assert!(Trust::new(&custody, (Pcr48::ZERO, Pcr48::ZERO), Verifier::aws(), false).err().expect("refused").contains("debug-mode"));
        let zero_origin = TrustArgs { origin_pcr0: vec!["00".repeat(48)], ..custody.clone() };
        assert!(Trust::new(&zero_origin, (Pcr48([1; 48]), Pcr48::ZERO), Verifier::aws(), false).is_err());
        assert!(t.check_import().unwrap_err().message.contains("import-disabled"));
        // Signer trust needs a signed image, and never a zero signer.
        let by_signer = TrustArgs { custody_trust: Some("pcr8".into()), ..custody.clone() };
        assert!(Trust::new(&by_signer, (Pcr48([1; 48]), Pcr48::ZERO), Verifier::aws(), true)
            .err()
            .expect("refused")
            .contains("not signed"));
        let t8 = Trust::new(&by_signer, (Pcr48([1; 48]), Pcr48([8; 48])), Verifier::aws(), false).unwrap();
        assert_eq!((t8.custody_trust(), t8.origin_pcr8()), ("pcr8", &[Pcr48([8; 48])][..]));
        let zero_signer = TrustArgs { origin_pcr8: vec!["00".repeat(48)], ..custody.clone() };
        assert!(Trust::new(&zero_signer, (Pcr48([1; 48]), Pcr48::ZERO), Verifier::aws(), true).is_err());
        let bad = TrustArgs { custody_trust: Some("pcr1".into()), ..custody.clone() };
        assert!(Trust::new(&bad, (Pcr48([1; 48]), Pcr48([8; 48])), Verifier::aws(), true).is_err());

        // An imported record under the pinned key is not opened while imports are off.
        let key = nekms_keys::PrivateKey::generate(nekms_keys::KeySpec::Ed25519, &[3; 32]).unwrap();
        let origin = nekms_keys::Origin::Imported;
        let record = KeyRecord {
            key_id: "imp".into(),
            spec: key.spec(),
            public_key: key.public_key().spki().to_vec(),
            kms_key_id: ARN.into(),
            encryption_context: nekms_keys::record::binding_context("imp", key.spec(), origin, &BTreeMap::new()).unwrap(),
            encrypted_data_key: vec![1; 100],
            sealed_private_key: vec![0; 80],
            origin,
            created_at: 0,
            attestation: None,
            migration: None,
        };
        assert!(t.check_record(&record).unwrap_err().message.contains("rule import-disabled"));
    }
}

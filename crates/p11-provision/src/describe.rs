//! What the enclave holds, for people and for scripts: one token with its
//! certificates and where the database disagrees (`nekms p11 token
//! describe`), the device as a whole (`nekms p11 device`), and every slot
//! (`nekms p11 slots`). Each comes as JSON and as text.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::bail;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_rpc::{Description, P11PublicKey, P11Request, P11Response, P11Slot, Request, Response};

use crate::connect::{unexpected, Enclave};
use crate::db::{Database, TokenEntry, MAX_TOKENS};

/// One token as the enclave holds it, and the database's view of it.
#[derive(Clone, Debug)]
pub struct TokenDescription {
    /// The enclave's slot, certificates included.
    pub slot: P11Slot,
    /// The token database consulted.
    pub database: PathBuf,
    /// Where the enclave and the database differ (a token changed through
    /// another database, or never stored); empty when they agree.
    pub differences: Vec<String>,
}

/// `nekms p11 token describe`: token `label` in the enclave, compared with
/// the database at `db`.
pub async fn describe_token(enclave: &Enclave, db: &Path, label: &str) -> anyhow::Result<TokenDescription> {
    let slots = match enclave.p11(P11Request::Slots).await? {
        P11Response::Slots(s) => s,
        other => return unexpected(other),
    };
    let slot = slots.iter().find(|s| s.label == label).map(|s| s.slot);
    let database = Database::load(db)?;
    let entry = database.get(label);
    let Some(slot) = slot else {
        match entry {
            Some(_) => bail!("the enclave has no token labelled {label:?}, but the database does: `nekms p11 token restore` puts it back"),
            None => bail!("no token labelled {label:?} in the enclave or the database"),
        }
    };
    let s = match enclave.p11(P11Request::Slot { slot }).await? {
        P11Response::Slot(s) => s,
        other => return unexpected(other),
    };
    let differences = differences(entry, &s);
    Ok(TokenDescription { slot: s, database: db.to_path_buf(), differences })
}

/// Where the database's entry for a token and the enclave's slot differ:
/// keys (by CKA_ID, with their number of certificates and whether they
/// decrypt) and writability.
pub fn differences(entry: Option<&TokenEntry>, s: &P11Slot) -> Vec<String> {
    let mut differences = Vec::new();
    match entry {
        None => differences.push("the database has no entry for it".to_owned()),
        Some(t) => {
            let ours: Vec<(String, usize, bool)> = t.keys.iter().map(|k| (k.id.clone(), k.certificates.len(), k.decrypt)).collect();
            let theirs: Vec<(String, usize, bool)> = s.keys.iter().map(|k| (hex::encode(&k.id), k.certificates.len(), k.decrypt)).collect();
            for k in &theirs {
                if !ours.contains(k) {
                    differences.push(format!(
                        "key {} (with {} certificate(s){}) is not so in the database",
                        k.0,
                        k.1,
                        if k.2 { ", decrypts" } else { "" }
                    ));
                }
            }
            for k in &ours {
                if !theirs.iter().any(|t| t.0 == k.0) {
                    differences.push(format!("the database's key {} is not in the enclave", k.0));
                }
            }
            if t.writable != s.writable {
                differences.push(format!("writable: enclave {}, database {}", s.writable, t.writable));
            }
        }
    }
    differences
}

/// A certificate's subject, issuer, serial and validity, for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateSummary {
    Read { subject: String, issuer: String, serial: String, not_before: String, not_after: String },
    Unreadable(String),
}

impl CertificateSummary {
    pub fn of(der: &[u8]) -> CertificateSummary {
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, c)) => CertificateSummary::Read {
                subject: c.subject().to_string(),
                issuer: c.issuer().to_string(),
                serial: c.raw_serial_as_string(),
                not_before: c.validity().not_before.to_rfc2822().unwrap_or_default(),
                not_after: c.validity().not_after.to_rfc2822().unwrap_or_default(),
            },
            Err(e) => CertificateSummary::Unreadable(format!("not a DER certificate: {e}")),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        match self {
            CertificateSummary::Read { subject, issuer, serial, not_before, not_after } => serde_json::json!({
                "subject": subject, "issuer": issuer, "serial": serial, "not_before": not_before, "not_after": not_after,
            }),
            CertificateSummary::Unreadable(e) => serde_json::json!({ "error": e }),
        }
    }
}

fn public_key_sha256(k: &P11PublicKey) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &k.public_key))
}

impl TokenDescription {
    pub fn json(&self) -> serde_json::Value {
        let s = &self.slot;
        let keys: Vec<serde_json::Value> = s
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "id": hex::encode(&k.id), "label": k.label, "spec": k.spec.as_str(), "decrypt": k.decrypt,
                    "public_key_sha256": public_key_sha256(k),
                    "certificates": k.certificates.iter().map(|c| CertificateSummary::of(c).json()).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "slot": s.slot, "label": s.label, "writable": s.writable, "locked": s.locked, "failures": s.failures,
            "keys": keys, "database": { "file": self.database.display().to_string(), "differences": self.differences },
        })
    }

    /// Lines, each ending in a newline.
    pub fn text(&self) -> String {
        let s = &self.slot;
        let mut out = String::new();
        let state = if s.locked {
            "LOCKED: provision it again to unlock".to_owned()
        } else {
            format!("{} wrong PIN(s) since the last good one", s.failures)
        };
        let _ =
            writeln!(out, "token {:?} in slot {} ({}, {state})", s.label, s.slot, if s.writable { "writable" } else { "write-protected" });
        for k in &s.keys {
            let _ = writeln!(
                out,
                "  key id {} {} {}{}, public key SHA-256 {}",
                hex::encode(&k.id),
                k.label,
                k.spec.as_str(),
                if k.decrypt { ", decrypts" } else { "" },
                public_key_sha256(k)
            );
            for c in &k.certificates {
                let _ = match CertificateSummary::of(c) {
                    // As JSON: the reason in quotes.
                    CertificateSummary::Unreadable(e) => writeln!(out, "    certificate: {}", serde_json::Value::String(e)),
                    CertificateSummary::Read { subject, issuer, not_after, .. } => {
                        writeln!(out, "    certificate {subject} (issuer {issuer}), valid until {not_after}")
                    }
                };
            }
        }
        if self.differences.is_empty() {
            let _ = writeln!(out, "database {}: agrees", self.database.display());
        } else {
            let _ = writeln!(out, "database {} differs:", self.database.display());
            for d in &self.differences {
                let _ = writeln!(out, "  {d}");
            }
        }
        out
    }
}

/// The enclave's PKCS#11 device as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSummary {
    /// The enclave program and its version (`nekms-enclave 0.1.0`).
    pub enclave: String,
    pub simulated: bool,
    /// PCR0, hex (empty if the enclave gave none).
    pub pcr0: String,
    pub tokens: usize,
    pub keys: usize,
    pub locked_tokens: usize,
    pub writable_tokens: usize,
}

/// `nekms p11 device`: the enclave's description and its slots, on one connection.
pub async fn device(enclave: &Enclave) -> anyhow::Result<DeviceSummary> {
    let client = enclave.connect().await?;
    let d = match client.call(&Request::Describe).await? {
        Response::Described(d) => d,
        other => return unexpected(other),
    };
    let slots = match client.call(&Request::P11(P11Request::Slots)).await? {
        Response::P11(P11Response::Slots(s)) => s,
        other => return unexpected(other),
    };
    Ok(DeviceSummary::of(&d, &slots))
}

impl DeviceSummary {
    pub fn of(d: &Description, slots: &[P11Slot]) -> DeviceSummary {
        DeviceSummary {
            enclave: d.agent.clone(),
            simulated: d.simulated,
            pcr0: d.pcrs.iter().find(|p| p.index == 0).map(|p| hex::encode(&p.value)).unwrap_or_default(),
            tokens: slots.len(),
            keys: slots.iter().map(|s| s.keys.len()).sum(),
            locked_tokens: slots.iter().filter(|s| s.locked).count(),
            writable_tokens: slots.iter().filter(|s| s.writable).count(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "enclave": self.enclave, "simulated": self.simulated, "pcr0": self.pcr0, "tokens": self.tokens, "max_tokens": MAX_TOKENS,
            "keys": self.keys, "locked_tokens": self.locked_tokens, "writable_tokens": self.writable_tokens,
        })
    }

    /// Lines, each ending in a newline.
    pub fn text(&self) -> String {
        format!(
            "{}{}\nPCR0 {}\ntokens: {} of {MAX_TOKENS} ({} writable, {} locked); keys: {}\n",
            self.enclave,
            if self.simulated { " (simulated NSM: not a real enclave)" } else { "" },
            self.pcr0,
            self.tokens,
            self.writable_tokens,
            self.locked_tokens,
            self.keys
        )
    }
}

/// `nekms p11 slots`: every token's public description (no certificates).
pub async fn slots(enclave: &Enclave) -> anyhow::Result<Vec<P11Slot>> {
    match enclave.p11(P11Request::Slots).await? {
        P11Response::Slots(s) => Ok(s),
        other => unexpected(other),
    }
}

pub fn slots_json(slots: &[P11Slot]) -> serde_json::Value {
    let v: Vec<serde_json::Value> = slots
        .iter()
        .map(|s| {
            serde_json::json!({
                "slot": s.slot, "label": s.label, "locked": s.locked, "failures": s.failures,
                "keys": s.keys.iter().map(|k| serde_json::json!({
                    "id": hex::encode(&k.id), "label": k.label, "spec": k.spec.as_str(),
                    "public_key": B64.encode(&k.public_key), "certificates": k.certificate_count, "decrypt": k.decrypt,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::Value::Array(v)
}

/// Lines, each ending in a newline.
pub fn slots_text(slots: &[P11Slot]) -> String {
    let mut out = String::new();
    for s in slots {
        let state = if s.locked { "LOCKED".to_owned() } else { format!("{} wrong PIN(s)", s.failures) };
        let _ = writeln!(out, "slot {}: {} ({state})", s.slot, s.label);
        for k in &s.keys {
            let _ = writeln!(
                out,
                "  id {} {} {} ({} certificate(s){})",
                hex::encode(&k.id),
                k.label,
                k.spec.as_str(),
                k.certificate_count,
                if k.decrypt { ", decrypts" } else { "" }
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use nekms_keys::KeySpec;

    use super::*;
    use crate::db::{KeyEntry, VerifierEntry};

    fn key(id: u8, certificates: usize, decrypt: bool) -> P11PublicKey {
        P11PublicKey {
            id: vec![id],
            label: format!("k{id}"),
            spec: KeySpec::P256,
            public_key: vec![1, 2, 3],
            certificates: vec![serde_bytes::ByteBuf::from(vec![0x30, 0x00]); certificates],
            certificate_count: certificates as u32,
            decrypt,
        }
    }

    fn slot(keys: Vec<P11PublicKey>) -> P11Slot {
        P11Slot { slot: 3, label: "web".into(), locked: false, failures: 1, writable: false, keys }
    }

    fn entry(keys: Vec<KeyEntry>, writable: bool) -> TokenEntry {
        TokenEntry { label: "web".into(), pin_verifier: VerifierEntry::default(), keys, writable }
    }

    fn db_key(id: &str, certificates: usize, decrypt: bool) -> KeyEntry {
        KeyEntry { id: id.into(), key: format!("k{id}"), certificates: vec!["MAA=".into(); certificates], decrypt }
    }

    #[test]
    fn a_token_the_database_lacks_differs_by_that_alone() {
        assert_eq!(differences(None, &slot(vec![key(1, 0, false)])), ["the database has no entry for it"]);
    }

    #[test]
    fn a_database_that_matches_the_enclave_agrees() {
        let e = entry(vec![db_key("01", 1, true)], false);
        assert!(differences(Some(&e), &slot(vec![key(1, 1, true)])).is_empty());
    }

    #[test]
    fn keys_certificates_decryption_and_writability_are_compared() {
        let e = entry(vec![db_key("01", 0, false), db_key("02", 0, false)], true);
        let s = slot(vec![key(1, 2, true), key(3, 0, false)]);
        assert_eq!(
            differences(Some(&e), &s),
            [
                "key 01 (with 2 certificate(s), decrypts) is not so in the database",
                "key 03 (with 0 certificate(s)) is not so in the database",
                "the database's key 02 is not in the enclave",
                "writable: enclave false, database true",
            ]
        );
    }

    #[test]
    fn the_text_names_the_state_keys_unreadable_certificates_and_differences() {
        let d = TokenDescription { slot: slot(vec![key(1, 1, true)]), database: "/db.json".into(), differences: vec!["x".into()] };
        let text = d.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "token \"web\" in slot 3 (write-protected, 1 wrong PIN(s) since the last good one)");
        assert!(lines[1].starts_with("  key id 01 k1 p256, decrypts, public key SHA-256 039058c6"), "{}", lines[1]);
        assert!(lines[2].starts_with("    certificate: \"not a DER certificate: "), "{}", lines[2]);
        assert_eq!(&lines[3..], ["database /db.json differs:", "  x"]);
        assert_eq!(d.json()["keys"][0]["certificates"][0]["error"].as_str().map(|e| e.starts_with("not a DER")), Some(true));
    }

    #[test]
    fn the_device_counts_tokens_keys_and_states() {
        let mut locked = slot(vec![key(1, 0, false), key(2, 0, false)]);
        locked.locked = true;
        let mut writable = slot(vec![key(1, 0, false)]);
        writable.writable = true;
        let description = Description {
            protocol_version: 1,
            agent: "nekms-enclave 0.1.0".into(),
            simulated: true,
            nsm: nekms_rpc::NsmInfo {
                module_id: "m".into(),
                version: "1".into(),
                max_pcrs: 32,
                locked_pcrs: vec![],
                digest: "SHA384".into(),
            },
            pcrs: vec![
                nekms_rpc::PcrInfo { index: 1, locked: true, value: vec![1] },
                nekms_rpc::PcrInfo { index: 0, locked: true, value: vec![0xab] },
            ],
            kms_endpoint: String::new(),
            proxy: String::new(),
            region: None,
            kmstool: None,
            credentials: None,
            recipient_key_sha256: vec![],
            key_cache: None,
            trust: None,
            audit: None,
        };
        let d = DeviceSummary::of(&description, &[locked.clone(), writable.clone()]);
        assert_eq!(
            d.text(),
            "nekms-enclave 0.1.0 (simulated NSM: not a real enclave)\nPCR0 ab\ntokens: 2 of 1024 (1 writable, 1 locked); keys: 3\n"
        );
        assert_eq!(d.json()["max_tokens"], 1024);
        assert_eq!(slots_text(&[locked]).lines().next(), Some("slot 3: web (LOCKED)"));
        assert_eq!(slots_json(&[writable])[0]["keys"][0]["public_key"], "AQID");
    }
}

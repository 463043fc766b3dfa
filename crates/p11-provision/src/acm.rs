//! Moving a token from ACM for Nitro Enclaves, in two steps, one per role.
//!
//! ACM's key database (`p11ne-db pack-key`) is a JSON list of
//! `{encrypted_pem_b64, id, label, cert_pem}`, each a KMS Encrypt of a
//! private key's PEM with no encryption context: nothing binds a ciphertext
//! to its entry but the certificate beside it.
//!
//! - [`convert`], as the administrator: open each PEM with KMS (under ACM's
//!   key only) in this process's memory, check it against its certificate
//!   (an entry without one is refused), and encrypt it again for nekms's
//!   import path, bound to its new name ([`key_name`]) and spec. The
//!   [`Bundle`] written holds import ciphertexts and certificates only.
//! - [`import`], on the parent: the enclave imports each key, then the token
//!   is provisioned with a PIN verifier and written to the token database;
//!   on any failure the records this run stored are removed again.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_keys::KeySpec;
use nekms_rpc::{P11Request, P11Response, Request, Response};
use nekms_store::KeyStore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::connect::{unexpected, Enclave, KeyStoreLocation};
use crate::db::{Database, KeyEntry, TokenEntry, VerifierEntry};
use crate::token::{pem_certificates, read_pin, token_request};

/// One key of ACM's p11ne-db.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcmKey {
    encrypted_pem_b64: String,
    id: u64,
    label: String,
    #[serde(default)]
    cert_pem: Option<String>,
}

/// What [`convert`] hands to [`import`]: public material and import
/// ciphertexts only.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// The nekms token the keys go to.
    pub token: String,
    /// The custody KMS key the import ciphertexts are made under.
    pub kms_key: String,
    pub keys: Vec<BundleKey>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BundleKey {
    /// The record's name in the key store.
    pub name: String,
    pub spec: KeySpec,
    /// CKA_ID, hex (ACM's one-byte ids).
    pub id: String,
    /// ACM's key label.
    pub acm_label: String,
    /// The import ciphertext, base64.
    pub import_ciphertext: String,
    /// DER certificates, base64, leaf first.
    pub certificates: Vec<String>,
}

/// The key-store name of an ACM key: `acm-<token>-<id>`, the token's
/// characters other than letters, digits and `._-` made `_`.
pub fn key_name(token: &str, id: u8) -> String {
    let safe: String = token.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    format!("acm-{safe}-{id:02x}")
}

/// What the administrator gives [`convert`].
#[derive(Clone, Copy, Debug)]
pub struct Conversion<'a> {
    /// The p11ne-db file.
    pub input: &'a Path,
    /// The nekms token the keys go to.
    pub token: &'a str,
    /// The custody KMS key (ARN) the import ciphertexts are made under.
    pub kms_key: &'a str,
    /// The KMS key (ARN) ACM's ciphertexts were made under: nothing else is decrypted.
    pub acm_kms_key: &'a str,
    /// Where the bundle goes.
    pub out: &'a Path,
    /// The administrator's AWS profile.
    pub profile: Option<&'a str>,
    /// A KMS endpoint (the local KMS) instead of the SDK's.
    pub endpoint: Option<&'a str>,
}

/// Convert ACM's database into a bundle for [`import`], written to
/// `c.out`; the bundle.
pub async fn convert(c: &Conversion<'_>) -> anyhow::Result<Bundle> {
    let input = c.input;
    let text = std::fs::read_to_string(input).with_context(|| input.display().to_string())?;
    let keys: Vec<AcmKey> = serde_json::from_str(&text).with_context(|| format!("{}: not a p11ne-db key database", input.display()))?;
    if keys.is_empty() {
        bail!("{}: no keys", input.display());
    }
    let client = nekms_parent::import::admin_kms(c.endpoint, c.profile).await;
    let mut out_keys = Vec::new();
    for k in &keys {
        let id = u8::try_from(k.id).map_err(|_| anyhow::anyhow!("key {:?}: ACM ids are one byte, not {}", k.label, k.id))?;
        if keys.iter().filter(|o| o.id == k.id).count() > 1 {
            bail!("id {} appears twice in {}", k.id, input.display());
        }
        // The certificate is what binds an entry's key to it (ACM's
        // ciphertexts carry no context): an entry without one is refused.
        let certificates = match &k.cert_pem {
            Some(pem) => pem_certificates(pem).with_context(|| format!("key {:?}: cert_pem", k.label))?,
            None => {
                bail!("key {:?} has no cert_pem: nothing binds its ciphertext to it; add its certificate chain to the database", k.label)
            }
        };
        let blob = B64.decode(k.encrypted_pem_b64.trim()).with_context(|| format!("key {:?}: encrypted_pem_b64 is not base64", k.label))?;
        // ACM encrypted the PEM with no encryption context.
        let opened =
            client.decrypt().key_id(c.acm_kms_key).ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob)).send().await.map_err(|e| {
                anyhow::anyhow!("key {:?}: KMS Decrypt of ACM's ciphertext: {}", k.label, aws_sdk_kms::error::DisplayErrorContext(&e))
            })?;
        let pem = Zeroizing::new(opened.plaintext().context("KMS Decrypt gave no plaintext")?.as_ref().to_vec());
        let private = nekms_keys::parse_private_key(&pem, None).with_context(|| format!("key {:?}: ACM's plaintext", k.label))?;
        let spec = private.spec();
        let (_, cert) = x509_parser::parse_x509_certificate(&certificates[0])
            .map_err(|e| anyhow::anyhow!("key {:?}: not a DER certificate: {e}", k.label))?;
        if cert.tbs_certificate.subject_pki.raw != private.public_key().spki() {
            bail!("key {:?}: its certificate is for another public key than the key in encrypted_pem_b64", k.label);
        }
        drop(private);
        let name = key_name(c.token, id);
        let ciphertext = nekms_parent::import::encrypt_for_import(
            &client,
            &name,
            spec,
            c.kms_key,
            &pem,
            &BTreeMap::new(),
            nekms_keys::context::Usage::Sign,
        )
        .await?;
        drop(pem);
        out_keys.push(BundleKey {
            name,
            spec,
            id: format!("{id:02x}"),
            acm_label: k.label.clone(),
            import_ciphertext: B64.encode(ciphertext),
            certificates: certificates.iter().map(|d| B64.encode(d)).collect(),
        });
    }
    let bundle = Bundle { token: c.token.to_owned(), kms_key: c.kms_key.to_owned(), keys: out_keys };
    std::fs::write(c.out, serde_json::to_vec_pretty(&bundle)?).with_context(|| c.out.display().to_string())?;
    Ok(bundle)
}

/// What [`import`] provisioned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// The token's label.
    pub token: String,
    /// The records stored, in the bundle's order.
    pub records: Vec<String>,
}

/// Import a bundle's keys through the enclave's import path into the key
/// store, provision its token with the PIN in `pin_file`, and add the token
/// to the database at `path`. Nothing is half-done: on failure the records
/// this run stored are deleted again.
pub async fn import(enclave: &Enclave, store: &KeyStoreLocation, path: &Path, input: &Path, pin_file: &Path) -> anyhow::Result<Imported> {
    let bundle: Bundle = serde_json::from_slice(&std::fs::read(input).with_context(|| input.display().to_string())?)
        .with_context(|| format!("{}: not a bundle from `nekms p11 acm convert`", input.display()))?;
    let mut database = Database::load(path)?;
    if database.get(&bundle.token).is_some() {
        bail!("the token database already has a token labelled {:?}", bundle.token);
    }
    let pin = read_pin(pin_file)?;
    let store = store.open().await?;
    for k in &bundle.keys {
        if store.get(&k.name).await?.is_some() {
            bail!("the store already has a key named {:?}", k.name);
        }
    }
    let client = enclave.connect().await?;
    let mut imported: Vec<String> = Vec::new();
    let result: anyhow::Result<TokenEntry> = async {
        let mut keys = Vec::new();
        for k in &bundle.keys {
            let request = nekms_rpc::ImportKey {
                key_id: k.name.clone(),
                spec: Some(k.spec),
                kms_key_id: Some(bundle.kms_key.clone()),
                ciphertext: B64.decode(&k.import_ciphertext)?,
                ciphertext_context: BTreeMap::new(),
                ciphertext_key_id: None,
                encryption_context: BTreeMap::new(),
                nonce: None,
                decrypt: false,
                privval: false,
            };
            let record = client.import_key(request).await.with_context(|| format!("key {} ({})", k.name, k.acm_label))?;
            store.create(&record).await?;
            imported.push(k.name.clone());
            keys.push(KeyEntry { id: k.id.clone(), key: k.name.clone(), certificates: k.certificates.clone(), decrypt: false });
        }
        let token = TokenEntry { label: bundle.token.clone(), pin_verifier: VerifierEntry::default(), keys, writable: false };
        let request = token_request(&store, &token, Some(pin)).await?;
        let v = match client.call(&Request::P11(P11Request::AddToken { token: request, replace: false })).await? {
            Response::P11(P11Response::TokenAdded { pin_verifier, .. }) => pin_verifier,
            other => return unexpected(other),
        };
        Ok(TokenEntry { pin_verifier: v.into(), ..token })
    }
    .await;
    match result {
        Ok(token) => {
            database.tokens.push(token);
            database.save(path)?;
            Ok(Imported { token: bundle.token, records: imported })
        }
        Err(e) => {
            // Nothing half-done: the records this run stored go again.
            for name in &imported {
                let _ = store.delete(name).await;
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acm_key_is_named_after_its_token_and_id() {
        assert_eq!(key_name("acm-web", 1), "acm-acm-web-01");
        assert_eq!(key_name("web shop/é", 0xab), "acm-web_shop__-ab");
    }

    #[test]
    fn acm_entries_with_unknown_fields_are_refused() {
        let ok = r#"[{"encrypted_pem_b64": "AA==", "id": 1, "label": "k", "cert_pem": null}]"#;
        assert_eq!(serde_json::from_str::<Vec<AcmKey>>(ok).unwrap()[0].id, 1);
        let extra = r#"[{"encrypted_pem_b64": "AA==", "id": 1, "label": "k", "pin": "1234"}]"#;
        assert!(serde_json::from_str::<Vec<AcmKey>>(extra).is_err());
    }

    #[test]
    fn a_bundle_keeps_its_json_shape() {
        let bundle = Bundle {
            token: "web".into(),
            kms_key: "arn:k".into(),
            keys: vec![BundleKey {
                name: "acm-web-01".into(),
                spec: KeySpec::P256,
                id: "01".into(),
                acm_label: "k".into(),
                import_ciphertext: "AA==".into(),
                certificates: vec!["MAA=".into()],
            }],
        };
        let v = serde_json::to_value(&bundle).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"token": "web", "kms_key": "arn:k", "keys": [{"name": "acm-web-01", "spec": "p256", "id": "01",
                "acm_label": "k", "import_ciphertext": "AA==", "certificates": ["MAA="]}]})
        );
        assert_eq!(serde_json::from_value::<Bundle>(v).unwrap(), bundle);
    }

    async fn convert_error(db: &str) -> String {
        // No region lookup through the instance metadata service: the errors come first.
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("web.db");
        std::fs::write(&input, db).unwrap();
        let out = dir.path().join("bundle.json");
        let c = Conversion {
            input: &input,
            token: "web",
            kms_key: "arn:custody",
            acm_kms_key: "arn:acm",
            out: &out,
            profile: None,
            endpoint: Some("http://127.0.0.1:9"),
        };
        let e = convert(&c).await.unwrap_err();
        assert!(!out.exists());
        format!("{e:#}").replace(&input.display().to_string(), "IN")
    }

    #[tokio::test]
    async fn convert_refuses_an_empty_database_and_bad_entries_before_kms() {
        assert_eq!(convert_error("[]").await, "IN: no keys");
        assert!(convert_error("{}").await.starts_with("IN: not a p11ne-db key database: "));
        let entry = |id: u64, cert: &str| format!(r#"{{"encrypted_pem_b64": "AA==", "id": {id}, "label": "k{id}"{cert}}}"#);
        assert_eq!(convert_error(&format!("[{}]", entry(256, ""))).await, "key \"k256\": ACM ids are one byte, not 256");
        assert_eq!(convert_error(&format!("[{}, {}]", entry(1, ""), entry(1, ""))).await, "id 1 appears twice in IN");
        assert_eq!(
            convert_error(&format!("[{}]", entry(1, ""))).await,
            "key \"k1\" has no cert_pem: nothing binds its ciphertext to it; add its certificate chain to the database"
        );
        assert_eq!(
            convert_error(&format!("[{}]", entry(1, r#", "cert_pem": "junk""#))).await,
            "key \"k1\": cert_pem: no CERTIFICATE in the PEM file"
        );
    }
}

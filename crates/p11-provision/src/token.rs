//! A token from what the administrator gives: a label, a PIN file, keys
//! from the store as `NAME:ID`, certificate chains as `NAME:FILE` (PEM,
//! leaf first), the keys that may decrypt, and whether it is writable; then
//! the enclave's request for it, with the keys' records from the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_rpc::{P11Key, P11Token, SecretString};
use nekms_store::KeyStore;
use zeroize::Zeroizing;

use crate::db::{KeyEntry, TokenEntry, VerifierEntry};

/// What makes a token, as the command line gives it. The pairs stay text
/// until [`TokenSpec::entry`] reads them, so its messages name the flag and
/// the value given.
#[derive(Clone, Debug, Default)]
pub struct TokenSpec {
    /// The token label (1-32 characters; the enclave checks it).
    pub label: String,
    /// A file whose first line is the PIN (4-64 bytes); `-` is standard input.
    pub pin_file: Option<PathBuf>,
    /// `NAME:ID`: a key from the store and its CKA_ID in hex (`--key`).
    pub keys: Vec<String>,
    /// `NAME:FILE`: a key's certificate chain, PEM, leaf first (`--cert`).
    pub certs: Vec<String>,
    /// Keys (by name) that may decrypt as well as sign (`--decrypt`).
    pub decrypt: Vec<String>,
    /// Read-write sessions may generate key pairs (`--writable`).
    pub writable: bool,
}

impl TokenSpec {
    /// The database entry for this token, its certificate files read, with
    /// `verifier` (or an empty one, to be made by the enclave).
    pub fn entry(&self, verifier: Option<VerifierEntry>) -> anyhow::Result<TokenEntry> {
        let mut certs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for c in &self.certs {
            let (name, file) = split_pair(c, "--cert")?;
            let text = std::fs::read_to_string(file).with_context(|| file.to_owned())?;
            let ders = pem_certificates(&text).with_context(|| file.to_owned())?;
            if certs.insert(name, ders.iter().map(|d| B64.encode(d)).collect()).is_some() {
                bail!("--cert names {name} twice");
            }
        }
        let mut keys = Vec::new();
        for k in &self.keys {
            let (name, id) = split_pair(k, "--key")?;
            hex::decode(id).with_context(|| format!("--key {k}: the CKA_ID is not hex"))?;
            keys.push(KeyEntry {
                id: id.to_ascii_lowercase(),
                key: name.to_owned(),
                certificates: certs.remove(name).unwrap_or_default(),
                decrypt: self.decrypt.iter().any(|d| d == name),
            });
        }
        if let Some(d) = self.decrypt.iter().find(|d| !keys.iter().any(|k| k.key == **d)) {
            bail!("--decrypt names {d}, which no --key names");
        }
        if let Some(name) = certs.keys().next() {
            bail!("--cert names {name}, which no --key names");
        }
        Ok(TokenEntry { label: self.label.clone(), pin_verifier: verifier.unwrap_or_default(), keys, writable: self.writable })
    }
}

/// `NAME:VALUE`, split at the last colon (a key name may hold colons).
fn split_pair<'a>(s: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    s.rsplit_once(':').filter(|(a, b)| !a.is_empty() && !b.is_empty()).with_context(|| format!("{what} {s:?}: write NAME:VALUE"))
}

/// The PIN: the first line of `path`, or of standard input for `-`.
pub fn read_pin(path: &Path) -> anyhow::Result<SecretString> {
    let text = Zeroizing::new(if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s)?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| path.display().to_string())?
    });
    let line = text.lines().next().unwrap_or_default();
    Ok(SecretString(Zeroizing::new(line.to_owned())))
}

/// The DER certificates of a PEM file, in order.
pub fn pem_certificates(text: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            let b = body.take().context("END CERTIFICATE without BEGIN")?;
            out.push(B64.decode(b).context("a certificate's base64")?);
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    if out.is_empty() {
        bail!("no CERTIFICATE in the PEM file");
    }
    Ok(out)
}

/// The enclave's request for a token: its keys' records from the store, and
/// either the new `pin` or, without one, the verifier the database keeps.
pub async fn token_request<S: KeyStore>(store: &S, t: &TokenEntry, pin: Option<SecretString>) -> anyhow::Result<P11Token> {
    let mut keys = Vec::new();
    for k in &t.keys {
        let record = store.get(&k.key).await?.with_context(|| format!("no key named {:?} in the store", k.key))?;
        let certificates = k.certificates.iter().map(|c| B64.decode(c).map(serde_bytes::ByteBuf::from)).collect::<Result<_, _>>()?;
        keys.push(P11Key { id: hex::decode(&k.id)?, label: k.key.clone(), record, certificates, decrypt: k.decrypt });
    }
    let pin_verifier = match pin {
        Some(_) => None,
        None => Some(t.pin_verifier.to_pin_verifier()?),
    };
    Ok(P11Token { label: t.label.clone(), pin, pin_verifier, keys, writable: t.writable })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\njunk between\n-----BEGIN CERTIFICATE-----\nBAU=\n-----END CERTIFICATE-----\n";

    fn spec(keys: &[&str]) -> TokenSpec {
        TokenSpec { label: "web".into(), keys: keys.iter().map(|k| k.to_string()).collect(), ..TokenSpec::default() }
    }

    fn message(r: anyhow::Result<TokenEntry>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn a_pem_chain_gives_its_certificates_in_order() {
        assert_eq!(pem_certificates(PEM).unwrap(), vec![vec![0, 1, 2, 3], vec![4, 5]]);
    }

    #[test]
    fn a_pem_without_certificates_or_with_a_stray_end_is_refused() {
        assert_eq!(pem_certificates("-----BEGIN PRIVATE KEY-----\n").unwrap_err().to_string(), "no CERTIFICATE in the PEM file");
        assert_eq!(pem_certificates("-----END CERTIFICATE-----\n").unwrap_err().to_string(), "END CERTIFICATE without BEGIN");
    }

    #[test]
    fn keys_keep_their_order_and_ids_are_lowercased() {
        let t = spec(&["a:0A", "ns:b:ff"]).entry(None).unwrap();
        let keys: Vec<(&str, &str)> = t.keys.iter().map(|k| (k.key.as_str(), k.id.as_str())).collect();
        assert_eq!(keys, [("a", "0a"), ("ns:b", "ff")]);
        assert_eq!(t.pin_verifier, VerifierEntry::default());
    }

    #[test]
    fn a_key_without_a_name_or_a_hex_id_is_refused() {
        assert_eq!(message(spec(&["web"]).entry(None)), "--key \"web\": write NAME:VALUE");
        assert!(message(spec(&["web:zz"]).entry(None)).starts_with("--key web:zz: the CKA_ID is not hex: "));
    }

    #[test]
    fn decrypt_and_cert_must_name_a_key() {
        let mut s = spec(&["web:01"]);
        s.decrypt = vec!["mail".into()];
        assert_eq!(message(s.entry(None)), "--decrypt names mail, which no --key names");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("chain.pem");
        std::fs::write(&file, PEM).unwrap();
        let mut s = spec(&["web:01"]);
        s.certs = vec![format!("mail:{}", file.display())];
        assert_eq!(message(s.entry(None)), "--cert names mail, which no --key names");
        s.certs = vec![format!("web:{}", file.display()), format!("web:{}", file.display())];
        assert_eq!(message(s.entry(None)), "--cert names web twice");
    }

    #[test]
    fn certificates_and_decrypt_go_to_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("chain.pem");
        std::fs::write(&file, PEM).unwrap();
        let mut s = spec(&["web:01", "mail:02"]);
        s.certs = vec![format!("web:{}", file.display())];
        s.decrypt = vec!["mail".into()];
        s.writable = true;
        let t = s.entry(None).unwrap();
        assert_eq!(t.keys[0].certificates, ["AAECAw==", "BAU="]);
        assert!(!t.keys[0].decrypt && t.keys[1].decrypt && t.keys[1].certificates.is_empty() && t.writable);
    }

    #[test]
    fn the_pin_is_the_first_line_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pin");
        std::fs::write(&file, "123456\nsecond line\n").unwrap();
        assert_eq!(read_pin(&file).unwrap().0.as_str(), "123456");
    }

    #[tokio::test]
    async fn a_token_naming_a_key_the_store_lacks_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = nekms_store::SqliteStore::open(&dir.path().join("keys.db")).unwrap();
        let t = spec(&["web:01"]).entry(None).unwrap();
        let e = token_request(&store, &t, None).await.unwrap_err();
        assert_eq!(e.to_string(), "no key named \"web\" in the store");
    }
}

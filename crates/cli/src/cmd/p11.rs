//! `nekms p11 ...`: PKCS#11 tokens in the enclave, provisioned from the parent.
//!
//! A token is a label, a PIN and keys from the key store (custody records)
//! with their certificate chains. The enclave turns the PIN into a verifier
//! (PBKDF2); the parent's token database keeps that verifier, the key names
//! and the certificates, never the PIN, so `nekms p11 token restore` can put
//! every token back after the enclave restarts.

use nekms_keys::PinVerifierExt;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_keys::KeySpec;
use nekms_rpc::{P11Key, P11Request, P11Response, P11Token, PinVerifier, Request, Response, SecretString};
use nekms_store::KeyStore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::enclave::EnclaveArg;
use super::key::StoreArg;

#[derive(clap::Args, Clone, Debug)]
pub struct DbArg {
    /// The token database [default: $XDG_DATA_HOME/nekms/p11-tokens.json or ~/.local/share/nekms/p11-tokens.json]
    #[arg(long, env = "NEKMS_P11_DB", value_name = "FILE")]
    db: Option<PathBuf>,
}

impl DbArg {
    fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.db {
            return Ok(p.clone());
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .context("neither XDG_DATA_HOME nor HOME is set; give --db")?;
        Ok(base.join("nekms/p11-tokens.json"))
    }
}

#[derive(clap::Args)]
pub struct TokenArgs {
    #[command(flatten)]
    enclave: EnclaveArg,
    #[command(flatten)]
    spec: TokenSpec,
}

/// What makes a token: its label, PIN, keys and certificates.
#[derive(clap::Args)]
pub struct TokenSpec {
    #[command(flatten)]
    store: StoreArg,
    #[command(flatten)]
    db: DbArg,
    /// The token label (1-32 characters)
    #[arg(long)]
    label: String,
    /// A file whose first line is the PIN (4-64 bytes); `-` reads standard input
    #[arg(long, value_name = "FILE")]
    pin_file: Option<PathBuf>,
    /// A key from the store and its CKA_ID in hex: NAME:ID (repeat for more keys)
    #[arg(long = "key", value_name = "NAME:ID", required = true)]
    keys: Vec<String>,
    /// A key's certificate chain, PEM, leaf first: NAME:FILE
    #[arg(long = "cert", value_name = "NAME:FILE")]
    certs: Vec<String>,
    /// Let this RSA key decrypt as well as sign (C_Decrypt); keys sign only by default
    #[arg(long = "decrypt", value_name = "NAME")]
    decrypt: Vec<String>,
    /// Let read-write sessions generate key pairs on the token (C_GenerateKeyPair); `nekms p11 token sync` stores them
    #[arg(long)]
    writable: bool,
}

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Add a token
    Add(TokenArgs),
    /// Replace a token's keys and certificates (and its PIN, given --pin-file)
    Update(TokenArgs),
    /// Remove a token: its sessions end
    Remove {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[command(flatten)]
        db: DbArg,
        #[arg(long)]
        label: String,
    },
    /// Store the key pairs generated on a token (C_GenerateKeyPair) in the key store and the token database
    Sync {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        db: DbArg,
        #[arg(long)]
        label: String,
    },
    /// One token as the enclave holds it (keys, certificates, PIN state) and whether the database agrees
    Describe {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[command(flatten)]
        db: DbArg,
        #[arg(long)]
        label: String,
        #[arg(long)]
        json: bool,
    },
    /// Put every token of the database back into the enclave (after it restarted)
    Restore {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        db: DbArg,
    },
}

#[derive(clap::Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
pub enum Command {
    #[command(subcommand)]
    Token(TokenCommand),
    /// The enclave's PKCS#11 device: tokens in use of the most it takes, keys, locked tokens, the enclave's version and PCR0
    Device {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[arg(long)]
        json: bool,
    },
    /// The token database without the enclave
    #[command(subcommand)]
    Db(DbCommand),
    /// Move an ACM for Nitro Enclaves token (a p11ne-db key database) to nekms
    #[command(subcommand)]
    Acm(AcmCommand),
    /// The enclave's tokens as slots: labels, keys, certificates, PIN state
    Slots {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[arg(long)]
        json: bool,
    },
    /// The parent's p11-kit module file (/etc/pkcs11/modules/nekms.module) for a p11-kit server address
    ModuleConfig {
        /// What p11-kit's client dials: vsock:cid=16;port=9999 in production, unix:path=/run/nekms/p11-kit.sock in development
        #[arg(long, default_value = "vsock:cid=16;port=9999")]
        remote: String,
    },
}

#[derive(clap::Subcommand)]
pub enum DbCommand {
    /// Write a token into the database, checked against the key store, without the enclave (the PIN verifier is made
    /// here); `nekms p11 token restore` then provisions every token of the database
    Pack {
        #[command(flatten)]
        spec: TokenSpec,
        /// Replace a token of that label already in the database
        #[arg(long)]
        replace: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum AcmCommand {
    /// As the administrator: read a p11ne-db key database, open each key's PEM with KMS (under ACM's key, which has no
    /// encryption context), check it against its certificate, and encrypt it again for nekms's import path (under the
    /// custody key, bound to the new key's name and spec); the PEM stays in this process's memory
    Convert {
        /// The p11ne-db file: a JSON list of {encrypted_pem_b64, id, label, cert_pem}
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// The nekms token the keys go to
        #[arg(long)]
        token_label: String,
        /// The custody KMS key (ARN) the import ciphertexts are made under
        #[arg(long)]
        kms_key: String,
        /// The KMS key (ARN) ACM's ciphertexts were made under: nothing else is decrypted
        #[arg(long)]
        acm_kms_key: String,
        /// The bundle for `nekms p11 acm import` (no secret in it)
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
        #[arg(long)]
        profile: Option<String>,
        /// KMS endpoint (the local KMS) instead of the SDK's
        #[arg(long)]
        endpoint_url: Option<String>,
    },
    /// On the parent: import a converted bundle's keys through the enclave's import path and provision the token
    Import {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        db: DbArg,
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// A file whose first line is the new token's PIN (ACM kept it in nginx.conf; nekms keeps only a verifier)
        #[arg(long, value_name = "FILE")]
        pin_file: PathBuf,
    },
}

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

/// What `acm convert` hands to `acm import`: public material and import
/// ciphertexts only.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcmBundle {
    token: String,
    kms_key: String,
    keys: Vec<AcmBundleKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcmBundleKey {
    /// The record's name in the key store.
    name: String,
    spec: KeySpec,
    /// CKA_ID, hex (ACM's one-byte ids).
    id: String,
    /// ACM's key label.
    acm_label: String,
    /// The import ciphertext, base64.
    import_ciphertext: String,
    /// DER certificates, base64, leaf first.
    certificates: Vec<String>,
}

/// The key-store name of an ACM key: `acm-<token>-<id>`.
fn acm_key_name(token: &str, id: u8) -> String {
    let safe: String = token.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    format!("acm-{safe}-{id:02x}")
}

async fn acm_convert(
    input: &PathBuf,
    token: &str,
    kms_key: &str,
    acm_kms_key: &str,
    out: &PathBuf,
    profile: Option<&str>,
    endpoint: Option<&str>,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(input).with_context(|| input.display().to_string())?;
    let keys: Vec<AcmKey> = serde_json::from_str(&text).with_context(|| format!("{}: not a p11ne-db key database", input.display()))?;
    if keys.is_empty() {
        bail!("{}: no keys", input.display());
    }
    let client = super::key::admin_kms(endpoint, profile).await;
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
            client.decrypt().key_id(acm_kms_key).ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob)).send().await.map_err(|e| {
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
        let name = acm_key_name(token, id);
        let ciphertext =
            super::key::encrypt_for_import(&client, &name, spec, kms_key, &pem, &BTreeMap::new(), nekms_keys::context::Usage::Sign).await?;
        drop(pem);
        out_keys.push(AcmBundleKey {
            name,
            spec,
            id: format!("{id:02x}"),
            acm_label: k.label.clone(),
            import_ciphertext: B64.encode(ciphertext),
            certificates: certificates.iter().map(|d| B64.encode(d)).collect(),
        });
    }
    let bundle = AcmBundle { token: token.to_owned(), kms_key: kms_key.to_owned(), keys: out_keys };
    std::fs::write(out, serde_json::to_vec_pretty(&bundle)?).with_context(|| out.display().to_string())?;
    println!(
        "{} key(s) converted for token {token:?}: {}; on the parent: nekms p11 acm import --in {} --pin-file PIN",
        bundle.keys.len(),
        out.display(),
        out.display()
    );
    Ok(())
}

async fn acm_import(enclave: &EnclaveArg, store: &StoreArg, db: &DbArg, input: &PathBuf, pin_file: &PathBuf) -> anyhow::Result<()> {
    let bundle: AcmBundle = serde_json::from_slice(&std::fs::read(input).with_context(|| input.display().to_string())?)
        .with_context(|| format!("{}: not a bundle from `nekms p11 acm convert`", input.display()))?;
    let path = db.path()?;
    let mut database = load(&path)?;
    if database.tokens.iter().any(|t| t.label == bundle.token) {
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
    let result: anyhow::Result<DbToken> = async {
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
            keys.push(DbKey { id: k.id.clone(), key: k.name.clone(), certificates: k.certificates.clone(), decrypt: false });
        }
        let token = DbToken {
            label: bundle.token.clone(),
            pin_verifier: DbVerifier { salt: String::new(), iterations: 0, hash: String::new() },
            keys,
            writable: false,
        };
        let request = token_request(&store, &token, Some(pin)).await?;
        let v = match client.call(&Request::P11(P11Request::AddToken { token: request, replace: false })).await? {
            Response::P11(P11Response::TokenAdded { pin_verifier, .. }) => pin_verifier,
            other => bail!("the enclave answered {other:?}"),
        };
        Ok(DbToken { pin_verifier: DbVerifier { salt: hex::encode(v.salt), iterations: v.iterations, hash: hex::encode(v.hash) }, ..token })
    }
    .await;
    match result {
        Ok(token) => {
            database.tokens.push(token);
            save(&path, &database)?;
            println!(
                "token {:?} provisioned from ACM's database with {} key(s) (records {}); the database {}",
                bundle.token,
                imported.len(),
                imported.join(", "),
                path.display()
            );
            Ok(())
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

/// The most tokens an enclave holds.
const MAX_TOKENS: usize = 1024;

/// One token as the parent keeps it.
#[derive(Serialize, Deserialize, Clone)]
struct DbToken {
    label: String,
    pin_verifier: DbVerifier,
    keys: Vec<DbKey>,
    #[serde(default)]
    writable: bool,
}

#[derive(Serialize, Deserialize, Clone)]
struct DbVerifier {
    salt: String,
    iterations: u32,
    hash: String,
}

#[derive(Serialize, Deserialize, Clone)]
struct DbKey {
    /// CKA_ID, hex.
    id: String,
    /// The key's name in the key store (also its CKA_LABEL).
    key: String,
    /// DER certificates, base64, leaf first.
    certificates: Vec<String>,
    /// The key may decrypt as well as sign.
    #[serde(default)]
    decrypt: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct Db {
    tokens: Vec<DbToken>,
}

fn load(path: &PathBuf) -> anyhow::Result<Db> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{}: not a token database", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Db::default()),
        Err(e) => Err(e).with_context(|| path.display().to_string()),
    }
}

fn save(path: &PathBuf, db: &Db) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| tmp.display().to_string())?;
    f.write_all(&serde_json::to_vec_pretty(db)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(())
}

fn read_pin(path: &PathBuf) -> anyhow::Result<SecretString> {
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
fn pem_certificates(text: &str) -> anyhow::Result<Vec<Vec<u8>>> {
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

fn split_pair<'a>(s: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    s.rsplit_once(':').filter(|(a, b)| !a.is_empty() && !b.is_empty()).with_context(|| format!("{what} {s:?}: write NAME:VALUE"))
}

fn db_token(a: &TokenSpec, verifier: Option<DbVerifier>) -> anyhow::Result<DbToken> {
    let mut certs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for c in &a.certs {
        let (name, file) = split_pair(c, "--cert")?;
        let text = std::fs::read_to_string(file).with_context(|| file.to_owned())?;
        let ders = pem_certificates(&text).with_context(|| file.to_owned())?;
        if certs.insert(name, ders.iter().map(|d| B64.encode(d)).collect()).is_some() {
            bail!("--cert names {name} twice");
        }
    }
    let mut keys = Vec::new();
    for k in &a.keys {
        let (name, id) = split_pair(k, "--key")?;
        hex::decode(id).with_context(|| format!("--key {k}: the CKA_ID is not hex"))?;
        keys.push(DbKey {
            id: id.to_ascii_lowercase(),
            key: name.to_owned(),
            certificates: certs.remove(name).unwrap_or_default(),
            decrypt: a.decrypt.iter().any(|d| d == name),
        });
    }
    if let Some(d) = a.decrypt.iter().find(|d| !keys.iter().any(|k| k.key == **d)) {
        bail!("--decrypt names {d}, which no --key names");
    }
    if let Some(name) = certs.keys().next() {
        bail!("--cert names {name}, which no --key names");
    }
    let pin_verifier = verifier.unwrap_or(DbVerifier { salt: String::new(), iterations: 0, hash: String::new() });
    Ok(DbToken { label: a.label.clone(), pin_verifier, keys, writable: a.writable })
}

/// The request for a token: its records from the store.
async fn token_request(store: &nekms_store::Store, t: &DbToken, pin: Option<SecretString>) -> anyhow::Result<P11Token> {
    let mut keys = Vec::new();
    for k in &t.keys {
        let record = store.get(&k.key).await?.with_context(|| format!("no key named {:?} in the store", k.key))?;
        let certificates = k.certificates.iter().map(|c| B64.decode(c).map(serde_bytes::ByteBuf::from)).collect::<Result<_, _>>()?;
        keys.push(P11Key { id: hex::decode(&k.id)?, label: k.key.clone(), record, certificates, decrypt: k.decrypt });
    }
    let pin_verifier = match pin {
        Some(_) => None,
        None => Some(PinVerifier {
            salt: hex::decode(&t.pin_verifier.salt)?,
            iterations: t.pin_verifier.iterations,
            hash: hex::decode(&t.pin_verifier.hash)?,
        }),
    };
    Ok(P11Token { label: t.label.clone(), pin, pin_verifier, keys, writable: t.writable })
}

async fn p11(enclave: &EnclaveArg, request: P11Request) -> anyhow::Result<P11Response> {
    match enclave.connect().await?.call(&Request::P11(request)).await? {
        Response::P11(r) => Ok(r),
        other => bail!("the enclave answered {other:?}"),
    }
}

async fn add(t: TokenArgs, replace: bool) -> anyhow::Result<()> {
    let a = &t.spec;
    let path = a.db.path()?;
    let mut db = load(&path)?;
    let existing = db.tokens.iter().position(|t| t.label == a.label);
    match (existing, replace) {
        (Some(_), false) => bail!("the token database already has a token labelled {:?}; use `nekms p11 token update`", a.label),
        (None, true) => bail!("the token database has no token labelled {:?}", a.label),
        _ => {}
    }
    let pin = match &a.pin_file {
        Some(p) => Some(read_pin(p)?),
        None if replace => None,
        None => bail!("a new token needs --pin-file"),
    };
    let old_verifier = existing.map(|i| db.tokens[i].pin_verifier.clone());
    let token = db_token(a, old_verifier)?;
    let store = a.store.open().await?;
    let request = token_request(&store, &token, pin).await?;
    let (slot, v) = match p11(&t.enclave, P11Request::AddToken { token: request, replace }).await? {
        P11Response::TokenAdded { slot, pin_verifier } => (slot, pin_verifier),
        other => bail!("the enclave answered {other:?}"),
    };
    let token =
        DbToken { pin_verifier: DbVerifier { salt: hex::encode(v.salt), iterations: v.iterations, hash: hex::encode(v.hash) }, ..token };
    match existing {
        Some(i) => db.tokens[i] = token,
        None => db.tokens.push(token),
    }
    save(&path, &db)?;
    println!("token {:?} in slot {slot} ({} key(s)); database {}", a.label, a.keys.len(), path.display());
    Ok(())
}

/// `nekms p11 db pack`: the database entry `token add` would write, made
/// here. Every key must be in the store and every leaf certificate for its
/// key; the enclave checks both again when the token is restored.
async fn pack(a: TokenSpec, replace: bool) -> anyhow::Result<()> {
    let path = a.db.path()?;
    let mut db = load(&path)?;
    let existing = db.tokens.iter().position(|t| t.label == a.label);
    if existing.is_some() && !replace {
        bail!("the token database already has a token labelled {:?}; give --replace", a.label);
    }
    if existing.is_none() && db.tokens.len() >= MAX_TOKENS {
        bail!("the token database already has {MAX_TOKENS} tokens, the most an enclave holds");
    }
    let pin = read_pin(a.pin_file.as_ref().context("a packed token needs --pin-file")?)?;
    let v = PinVerifier::new(pin.0.as_bytes()).context("a PIN is 4 to 64 bytes")?;
    let token = db_token(&a, Some(DbVerifier { salt: hex::encode(v.salt), iterations: v.iterations, hash: hex::encode(v.hash) }))?;
    let store = a.store.open().await?;
    for k in &token.keys {
        let record = store.get(&k.key).await?.with_context(|| format!("no key named {:?} in the store", k.key))?;
        if k.decrypt && !record.may_decrypt() {
            bail!("--decrypt {}: the key was made to sign only (rule key-usage: only a key made with --decrypt may decrypt)", k.key);
        }
        if let Some(leaf) = k.certificates.first() {
            let der = B64.decode(leaf)?;
            let (_, cert) =
                x509_parser::parse_x509_certificate(&der).map_err(|e| anyhow::anyhow!("{}: not a DER certificate: {e}", k.key))?;
            if cert.tbs_certificate.subject_pki.raw != record.public_key.as_slice() {
                bail!("the first certificate given for {} is not for that key's public key", k.key);
            }
        }
    }
    match existing {
        Some(i) => db.tokens[i] = token,
        None => db.tokens.push(token),
    }
    save(&path, &db)?;
    println!("token {:?} packed into {} ({} key(s)); `nekms p11 token restore` provisions it", a.label, path.display(), a.keys.len());
    Ok(())
}

/// A certificate's subject, issuer, serial and validity, for people.
fn certificate_summary(der: &[u8]) -> serde_json::Value {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => serde_json::json!({
            "subject": c.subject().to_string(), "issuer": c.issuer().to_string(), "serial": c.raw_serial_as_string(),
            "not_before": c.validity().not_before.to_rfc2822().unwrap_or_default(),
            "not_after": c.validity().not_after.to_rfc2822().unwrap_or_default(),
        }),
        Err(e) => serde_json::json!({ "error": format!("not a DER certificate: {e}") }),
    }
}

/// `nekms p11 token describe`.
async fn describe(enclave: &EnclaveArg, db: &DbArg, label: &str, json: bool) -> anyhow::Result<()> {
    let slots = match p11(enclave, P11Request::Slots).await? {
        P11Response::Slots(s) => s,
        other => bail!("the enclave answered {other:?}"),
    };
    let slot = slots.iter().find(|s| s.label == label).map(|s| s.slot);
    let database = load(&db.path()?)?;
    let entry = database.tokens.iter().find(|t| t.label == label);
    let Some(slot) = slot else {
        match entry {
            Some(_) => bail!("the enclave has no token labelled {label:?}, but the database does: `nekms p11 token restore` puts it back"),
            None => bail!("no token labelled {label:?} in the enclave or the database"),
        }
    };
    let s = match p11(enclave, P11Request::Slot { slot }).await? {
        P11Response::Slot(s) => s,
        other => bail!("the enclave answered {other:?}"),
    };
    // Where the enclave and the database differ (a token changed by another database, or not stored).
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
    let keys: Vec<serde_json::Value> = s
        .keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "id": hex::encode(&k.id), "label": k.label, "spec": k.spec.as_str(), "decrypt": k.decrypt,
                "public_key_sha256": hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &k.public_key)),
                "certificates": k.certificates.iter().map(|c| certificate_summary(c)).collect::<Vec<_>>(),
            })
        })
        .collect();
    if json {
        let v = serde_json::json!({
            "slot": s.slot, "label": s.label, "writable": s.writable, "locked": s.locked, "failures": s.failures,
            "keys": keys, "database": { "file": db.path()?.display().to_string(), "differences": differences },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let state = if s.locked {
        "LOCKED: provision it again to unlock".to_owned()
    } else {
        format!("{} wrong PIN(s) since the last good one", s.failures)
    };
    println!("token {:?} in slot {} ({}, {state})", s.label, s.slot, if s.writable { "writable" } else { "write-protected" });
    for k in &keys {
        println!(
            "  key id {} {} {}{}, public key SHA-256 {}",
            k["id"].as_str().unwrap_or(""),
            k["label"].as_str().unwrap_or(""),
            k["spec"].as_str().unwrap_or(""),
            if k["decrypt"] == true { ", decrypts" } else { "" },
            k["public_key_sha256"].as_str().unwrap_or("")
        );
        for c in k["certificates"].as_array().into_iter().flatten() {
            match c.get("error") {
                Some(e) => println!("    certificate: {e}"),
                None => println!(
                    "    certificate {} (issuer {}), valid until {}",
                    c["subject"].as_str().unwrap_or(""),
                    c["issuer"].as_str().unwrap_or(""),
                    c["not_after"].as_str().unwrap_or("")
                ),
            }
        }
    }
    if differences.is_empty() {
        println!("database {}: agrees", db.path()?.display());
    } else {
        println!("database {} differs:", db.path()?.display());
        for d in &differences {
            println!("  {d}");
        }
    }
    Ok(())
}

/// `nekms p11 device`.
async fn device(enclave: &EnclaveArg, json: bool) -> anyhow::Result<()> {
    let client = enclave.connect().await?;
    let d = match client.call(&Request::Describe).await? {
        Response::Described(d) => d,
        other => bail!("the enclave answered {other:?}"),
    };
    let slots = match client.call(&Request::P11(P11Request::Slots)).await? {
        Response::P11(P11Response::Slots(s)) => s,
        other => bail!("the enclave answered {other:?}"),
    };
    let keys: usize = slots.iter().map(|s| s.keys.len()).sum();
    let locked = slots.iter().filter(|s| s.locked).count();
    let writable = slots.iter().filter(|s| s.writable).count();
    let pcr0 = d.pcrs.iter().find(|p| p.index == 0).map(|p| hex::encode(&p.value)).unwrap_or_default();
    if json {
        let v = serde_json::json!({
            "enclave": d.agent, "simulated": d.simulated, "pcr0": pcr0, "tokens": slots.len(), "max_tokens": MAX_TOKENS,
            "keys": keys, "locked_tokens": locked, "writable_tokens": writable,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{}{}", d.agent, if d.simulated { " (simulated NSM: not a real enclave)" } else { "" });
    println!("PCR0 {pcr0}");
    println!("tokens: {} of {MAX_TOKENS} ({writable} writable, {locked} locked); keys: {keys}", slots.len());
    Ok(())
}

pub fn run(c: Command) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        match c {
            Command::Token(TokenCommand::Add(a)) => add(a, false).await,
            Command::Token(TokenCommand::Update(a)) => add(a, true).await,
            Command::Token(TokenCommand::Describe { enclave, db, label, json }) => describe(&enclave, &db, &label, json).await,
            Command::Device { enclave, json } => device(&enclave, json).await,
            Command::Db(DbCommand::Pack { spec, replace }) => pack(spec, replace).await,
            Command::Acm(AcmCommand::Convert { input, token_label, kms_key, acm_kms_key, out, profile, endpoint_url }) => {
                acm_convert(&input, &token_label, &kms_key, &acm_kms_key, &out, profile.as_deref(), endpoint_url.as_deref()).await
            }
            Command::Acm(AcmCommand::Import { enclave, store, db, input, pin_file }) => {
                acm_import(&enclave, &store, &db, &input, &pin_file).await
            }
            Command::Token(TokenCommand::Remove { enclave, db, label }) => {
                let path = db.path()?;
                let mut tokens = load(&path)?;
                p11(&enclave, P11Request::RemoveToken { label: label.clone() }).await?;
                tokens.tokens.retain(|t| t.label != label);
                save(&path, &tokens)?;
                println!("token {label:?} removed");
                Ok(())
            }
            Command::Token(TokenCommand::Sync { enclave, store, db, label }) => {
                let path = db.path()?;
                let mut tokens = load(&path)?;
                let i = tokens
                    .tokens
                    .iter()
                    .position(|t| t.label == label)
                    .with_context(|| format!("the token database has no token labelled {label:?}"))?;
                let keys = match p11(&enclave, P11Request::Keys { label: label.clone() }).await? {
                    P11Response::Keys(k) => k,
                    other => bail!("the enclave answered {other:?}"),
                };
                let store = store.open().await?;
                let mut added = 0;
                for k in keys {
                    let id = hex::encode(&k.id);
                    if tokens.tokens[i].keys.iter().any(|d| d.id == id) {
                        continue;
                    }
                    match store.get(&k.record.key_id).await? {
                        Some(existing) if existing.public_key == k.record.public_key => {}
                        Some(_) => bail!("the store already has another key named {:?}", k.record.key_id),
                        None => store.create(&k.record).await?,
                    }
                    tokens.tokens[i].keys.push(DbKey {
                        id: id.clone(),
                        key: k.record.key_id.clone(),
                        certificates: vec![],
                        decrypt: k.decrypt,
                    });
                    println!("key {} (CKA_ID {id}) stored", k.record.key_id);
                    added += 1;
                }
                save(&path, &tokens)?;
                println!("token {label:?}: {added} generated key(s) stored");
                Ok(())
            }
            Command::Token(TokenCommand::Restore { enclave, store, db }) => {
                let tokens = load(&db.path()?)?;
                let store = store.open().await?;
                let have: Vec<String> = match p11(&enclave, P11Request::Slots).await? {
                    P11Response::Slots(s) => s.into_iter().map(|s| s.label).collect(),
                    other => bail!("the enclave answered {other:?}"),
                };
                for t in &tokens.tokens {
                    let request = token_request(&store, t, None).await?;
                    let replace = have.contains(&t.label);
                    p11(&enclave, P11Request::AddToken { token: request, replace })
                        .await
                        .with_context(|| format!("token {:?}", t.label))?;
                    println!("token {:?} restored", t.label);
                }
                Ok(())
            }
            Command::Slots { enclave, json } => {
                let slots = match p11(&enclave, P11Request::Slots).await? {
                    P11Response::Slots(s) => s,
                    other => bail!("the enclave answered {other:?}"),
                };
                if json {
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
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    for s in &slots {
                        let state = if s.locked { "LOCKED".to_owned() } else { format!("{} wrong PIN(s)", s.failures) };
                        println!("slot {}: {} ({state})", s.slot, s.label);
                        for k in &s.keys {
                            println!(
                                "  id {} {} {} ({} certificate(s){})",
                                hex::encode(&k.id),
                                k.label,
                                k.spec.as_str(),
                                k.certificate_count,
                                if k.decrypt { ", decrypts" } else { "" }
                            );
                        }
                    }
                }
                Ok(())
            }
            Command::ModuleConfig { remote } => {
                println!("# /etc/pkcs11/modules/nekms.module: p11-kit's client reaches the enclave's p11-kit server");
                println!("remote: {remote}");
                println!("# The PIN is not here: give it to libp11 with pin-source=file:/path (mode 0600).");
                Ok(())
            }
        }
    })
}

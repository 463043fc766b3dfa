//! `nekms key ...`, `nekms sign`, `nekms verify`, `nekms store ...`: key
//! records made or imported by the enclave, kept in the parent's store,
//! used by the enclave to sign.

use nekms_keys::RecordExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_keys::context::Usage;
use nekms_keys::{KeyRecord, KeySpec, Payload, PublicKey, Scheme, Signature};
use nekms_rpc::{Entropy, GenerateKey, ImportKey};
use nekms_store::{DynamoStore, KeyStore, Store, StoreUrl};
use serde_json::json;

use super::enclave::EnclaveArg;

/// Where key records are kept.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreArg {
    /// sqlite:PATH or dynamodb:TABLE [default: sqlite:$XDG_DATA_HOME/nekms/keys.db or ~/.local/share/nekms/keys.db]
    #[arg(long, env = "NEKMS_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// DynamoDB endpoint (moto, DynamoDB Local) instead of the SDK's
    #[arg(long, env = "NEKMS_STORE_ENDPOINT", value_name = "URL")]
    pub endpoint_url: Option<String>,
}

impl StoreArg {
    pub fn url(&self) -> anyhow::Result<StoreUrl> {
        match &self.store {
            Some(s) => s.parse().map_err(anyhow::Error::msg),
            None => {
                let base = std::env::var_os("XDG_DATA_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                    .context("neither XDG_DATA_HOME nor HOME is set; give --store")?;
                Ok(StoreUrl::Sqlite(base.join("nekms/keys.db")))
            }
        }
    }

    pub async fn open(&self) -> anyhow::Result<Store> {
        let url = self.url()?;
        Store::open(&url, self.endpoint_url.as_deref()).await.with_context(|| format!("opening {url}"))
    }

    /// For commands that only read: a store that does not exist is an error, and nothing is created.
    pub async fn open_existing(&self) -> anyhow::Result<Store> {
        let url = self.url()?;
        Store::open_existing(&url, self.endpoint_url.as_deref()).await.map_err(|e| match e {
            nekms_store::StoreError::Missing(_) => crate::exit::not_found(e.to_string()),
            e => anyhow::Error::new(e).context(format!("opening {url}")),
        })
    }
}

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Make a key inside the enclave, sealed under a KMS data key, and store its record
    Create {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[command(flatten)]
        store: StoreArg,
        /// The key's name (1-128 of letters, digits and ._-:@/)
        #[arg(long)]
        name: String,
        /// secp256k1, ed25519, p256, p384, rsa2048, rsa3072 or rsa4096
        #[arg(long)]
        spec: KeySpec,
        /// A custody KMS key pinned in the enclave's configuration (ARN or key id) [default: the only one]
        #[arg(long, value_name = "KMS_KEY")]
        kms_key: Option<String>,
        /// Entropy: nsm (NSM GetRandom and the OS) or kms (also KMS GenerateRandom, with attestation)
        #[arg(long, default_value = "nsm", value_parser = parse_entropy)]
        entropy: Entropy,
        /// Extra encryption-context pair for the data key (repeatable)
        #[arg(long, value_name = "KEY=VALUE")]
        context: Vec<String>,
        /// Nonce (hex) for the attestation document that vouches for the key
        #[arg(long, value_name = "HEX")]
        nonce: Option<String>,
        /// An RSA key that may also decrypt (a PKCS#11 token's --decrypt); fixed in the record, never granted later
        #[arg(long)]
        decrypt: bool,
        /// A validator's consensus key (ed25519, secp256k1): only the validator signer signs with it; fixed in the record
        #[arg(long, conflicts_with = "decrypt")]
        privval: bool,
        /// An RSA key that only decrypts, RSAES-OAEP (AWS KMS's ENCRYPT_DECRYPT): it signs nothing and no token takes it
        #[arg(long, conflicts_with_all = ["decrypt", "privval"])]
        decrypt_only: bool,
        #[arg(long)]
        json: bool,
    },
    /// Reseal a KMS-encrypted private key (raw secret, PKCS#8, SEC1, PKCS#1, tmkms softsign) into a record
    Import {
        #[command(flatten)]
        enclave: EnclaveArg,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        name: String,
        /// The key's spec, as given to encrypt-for-import (the import context binds it)
        #[arg(long)]
        spec: KeySpec,
        /// A custody KMS key pinned in the enclave's configuration [default: the only one]
        #[arg(long, value_name = "KMS_KEY")]
        kms_key: Option<String>,
        /// The import ciphertext (nekms key encrypt-for-import): a file (binary or base64)
        #[arg(long, value_name = "FILE", group = "source")]
        ciphertext_file: Option<PathBuf>,
        /// The KMS ciphertext of the key, base64
        #[arg(long, value_name = "BASE64", group = "source")]
        ciphertext: Option<String>,
        /// A Secrets Manager secret holding the ciphertext (SecretBinary, or base64 in SecretString)
        #[arg(long, value_name = "ID|ARN", group = "source")]
        secret_id: Option<String>,
        /// Secrets Manager endpoint (moto) instead of the SDK's
        #[arg(long, env = "NEKMS_SECRETS_ENDPOINT", value_name = "URL")]
        secrets_endpoint_url: Option<String>,
        /// Entries the administrator added to the import context, besides nekms:purpose and nekms:key-id (repeatable)
        #[arg(long, value_name = "KEY=VALUE")]
        ciphertext_context: Vec<String>,
        /// Extra encryption-context pair for the record's data key (repeatable)
        #[arg(long, value_name = "KEY=VALUE")]
        context: Vec<String>,
        #[arg(long, value_name = "HEX")]
        nonce: Option<String>,
        /// An RSA key that may also decrypt (a PKCS#11 token's --decrypt); fixed in the record, never granted later
        #[arg(long)]
        decrypt: bool,
        /// A validator's consensus key (ed25519, secp256k1): only the validator signer signs with it; fixed in the record
        #[arg(long, conflicts_with = "decrypt")]
        privval: bool,
        #[arg(long)]
        json: bool,
    },
    /// As the administrator: KMS-encrypt a private key for `key import` (the import context binds it to one name)
    EncryptForImport {
        /// The name the key will be imported as
        #[arg(long)]
        name: String,
        /// The key's spec, required for raw secrets (give the same to `key import`)
        #[arg(long)]
        spec: Option<KeySpec>,
        /// The custody KMS key (ARN) the enclave pins
        #[arg(long, value_name = "ARN")]
        kms_key: String,
        /// The private key: raw secret (binary, hex, base64), PKCS#8, SEC1 or PKCS#1 (DER or PEM), tmkms softsign, priv_validator_key.json
        #[arg(value_name = "FILE")]
        key_file: PathBuf,
        /// Extra (non-reserved) context entries; give the same to `key import --ciphertext-context`
        #[arg(long, value_name = "KEY=VALUE")]
        context: Vec<String>,
        /// Write the ciphertext here (binary) instead of printing base64
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
        /// KMS endpoint (the local KMS) instead of the SDK's
        #[arg(long, env = "AWS_ENDPOINT_URL_KMS", value_name = "URL")]
        endpoint_url: Option<String>,
        /// AWS profile of the key administrator
        #[arg(long)]
        profile: Option<String>,
        /// An RSA key that may also decrypt once imported (bound into the ciphertext's context; give `key import --decrypt`)
        #[arg(long)]
        decrypt: bool,
        /// A validator's consensus key once imported (bound into the ciphertext's context; give `key import --privval`)
        #[arg(long, conflicts_with = "decrypt")]
        privval: bool,
    },
    /// Add a record (JSON, as `key show --json` prints it) to the store, after checking its origin document
    Add {
        #[command(flatten)]
        store: StoreArg,
        /// The record's JSON file, or - for standard input
        record: PathBuf,
        #[command(flatten)]
        origin: OriginArgs,
    },
    /// Check a record's origin document: the chain, the image (PCR0), and that it commits to exactly this record
    VerifyOrigin {
        #[command(flatten)]
        store: StoreArg,
        name: String,
        #[command(flatten)]
        origin: OriginArgs,
        #[arg(long)]
        json: bool,
    },
    /// The stored keys
    List {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        json: bool,
        /// Records fetched per request
        #[arg(long, default_value_t = 100, hide = true)]
        page_size: usize,
    },
    /// One record (all of it is public)
    Show {
        #[command(flatten)]
        store: StoreArg,
        name: String,
        #[arg(long)]
        json: bool,
        /// Write the creating enclave's origin document here (check it with `nekms key verify-origin`)
        #[arg(long, value_name = "FILE")]
        attestation_out: Option<PathBuf>,
    },
    /// The public key: PEM, DER (hex) or the Ethereum address
    PublicKey {
        #[command(flatten)]
        store: StoreArg,
        name: String,
        #[arg(long, group = "form")]
        pem: bool,
        /// The Ethereum address (secp256k1)
        #[arg(long, group = "form")]
        address: bool,
    },
    /// Schedule a record's deletion (it signs nothing meanwhile), or with --now delete it at once (the key becomes
    /// unusable unless another copy of the record exists)
    Delete {
        #[command(flatten)]
        store: StoreArg,
        name: String,
        /// Days until the record is deleted, 7 to 30, as KMS's ScheduleKeyDeletion
        #[arg(long, value_name = "DAYS", default_value_t = 30)]
        pending_days: u32,
        /// Delete at once (asks for the name on a terminal, unless --yes)
        #[arg(long)]
        now: bool,
        /// With --now: do not ask
        #[arg(long, requires = "now")]
        yes: bool,
    },
    /// Keep a record scheduled for deletion
    CancelDeletion {
        #[command(flatten)]
        store: StoreArg,
        name: String,
    },
}

/// What to sign or verify.
#[derive(clap::Args, Clone, Debug)]
#[group(required = true, multiple = false)]
pub struct PayloadArg {
    /// A message (UTF-8 text)
    #[arg(long)]
    message: Option<String>,
    /// A message read from a file
    #[arg(long, value_name = "FILE")]
    message_file: Option<PathBuf>,
    /// A prehashed digest (hex): ECDSA/RSA prehash, or an EIP-712 signing hash
    #[arg(long, value_name = "HEX")]
    digest: Option<String>,
    /// An Ethereum transaction (JSON file: legacy with chainId, or EIP-1559)
    #[arg(long, value_name = "FILE")]
    eth_tx: Option<PathBuf>,
    /// EIP-191 personal_sign of this text
    #[arg(long, value_name = "TEXT")]
    eth_personal: Option<String>,
    /// EIP-712 typed data (JSON file)
    #[arg(long, value_name = "FILE")]
    eip712: Option<PathBuf>,
}

impl PayloadArg {
    /// The payload and the scheme it implies, if any.
    fn resolve(&self) -> anyhow::Result<(Payload, Option<Scheme>)> {
        let read = |p: &Path| std::fs::read(p).with_context(|| p.display().to_string());
        let read_text = |p: &Path| std::fs::read_to_string(p).with_context(|| p.display().to_string());
        Ok(if let Some(m) = &self.message {
            (Payload::Message(m.as_bytes().to_vec()), None)
        } else if let Some(p) = &self.message_file {
            (Payload::Message(read(p)?), None)
        } else if let Some(d) = &self.digest {
            (Payload::Digest(super::hex_arg("--digest", d.trim_start_matches("0x"))?), None)
        } else if let Some(p) = &self.eth_tx {
            (Payload::Transaction(read_text(p)?), Some(Scheme::EthTransaction))
        } else if let Some(t) = &self.eth_personal {
            (Payload::Message(t.as_bytes().to_vec()), Some(Scheme::EthPersonal))
        } else if let Some(p) = &self.eip712 {
            (Payload::TypedData(read_text(p)?), Some(Scheme::Eip712))
        } else {
            return Err(crate::exit::usage("say what to sign: --message, --message-file, --digest, --eth-tx, --eth-personal or --eip712"));
        })
    }
}

fn parse_entropy(s: &str) -> Result<Entropy, String> {
    match s {
        "nsm" => Ok(Entropy::Nsm),
        "kms" => Ok(Entropy::Kms),
        _ => Err(format!("{s:?}: use nsm or kms")),
    }
}

#[derive(clap::Args)]
pub struct SignArgs {
    #[command(flatten)]
    enclave: EnclaveArg,
    #[command(flatten)]
    store: StoreArg,
    /// The key's name
    #[arg(long)]
    key: String,
    #[command(flatten)]
    payload: PayloadArg,
    /// ecdsa, ecdsa-raw, ecdsa-recoverable, eth-personal, eip712, eth-tx, ed25519, rsa-pkcs1-sha1|224|256|384|512, rsa-pss-sha1|224|256|384|512, rsa-pss-HASH-mgf1-HASH-salt-N [default: by the key and payload]
    #[arg(long)]
    scheme: Option<Scheme>,
    /// Write the raw signature bytes here
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The key's name in the store
    #[arg(long, group = "public")]
    key: Option<String>,
    /// A public key file (PEM or DER SubjectPublicKeyInfo)
    #[arg(long, value_name = "FILE", group = "public")]
    public_key: Option<PathBuf>,
    #[command(flatten)]
    payload: PayloadArg,
    #[arg(long)]
    scheme: Option<Scheme>,
    /// The signature, hex
    #[arg(long, value_name = "HEX", group = "sig")]
    signature: Option<String>,
    /// The signature, a file of raw bytes
    #[arg(long, value_name = "FILE", group = "sig")]
    signature_file: Option<PathBuf>,
}

/// What an origin document must chain to and come from. The trusted images
/// are given here, never asked of an enclave over the parent's channel,
/// which root on the parent could answer itself.
#[derive(clap::Args, Clone, Debug)]
pub struct OriginArgs {
    /// PCR0 (hex) of an enclave image trusted to make keys (repeatable; `nekms enclave describe` or nitro-cli shows it)
    #[arg(long = "pcr0", value_name = "HEX", required_unless_present = "pcr8")]
    pcr0: Vec<String>,
    /// PCR8 (hex) of an image signer trusted to make keys: every image it signed (repeatable; `nekms image pcr8 --cert`)
    #[arg(long = "pcr8", value_name = "HEX")]
    pcr8: Vec<String>,
    /// A migration approver's public key (PEM or DER SPKI): migrated records are accepted only with enough approvals
    /// (repeatable)
    #[arg(long = "approver", value_name = "FILE", requires = "threshold")]
    approvers: Vec<PathBuf>,
    /// How many approvers a migrated record's approval needs
    #[arg(long, value_name = "N", requires = "approvers")]
    threshold: Option<usize>,
    /// Accept imported keys too (their secret is as safe as the administrator who imported them kept it)
    #[arg(long)]
    allow_imported: bool,
    #[command(flatten)]
    root: super::attest::RootArgs,
}

impl OriginArgs {
    /// Verify `r`'s origin document.
    fn verify(&self, r: &KeyRecord) -> anyhow::Result<nekms_keys::origin::Origin> {
        let (verifier, _) = self.root.verifier()?;
        if r.origin == nekms_keys::Origin::Imported && !self.allow_imported {
            bail!(
                "rule import-disabled: key record {} was imported by an administrator; pass --allow-imported to accept imported keys",
                r.key_id
            );
        }
        let parse = |list: &[String], flag: &str| {
            list.iter()
                .map(|h| h.parse::<nekms_attestation::Pcr48>().with_context(|| format!("{flag} {h}")))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let trusted = nekms_keys::origin::TrustedImages {
            pcr0: parse(&self.pcr0, "--pcr0")?,
            pcr8: parse(&self.pcr8, "--pcr8")?,
            approvers: self.approvers.iter().map(super::migrate::spki).collect::<anyhow::Result<_>>()?,
            threshold: self.threshold.unwrap_or(0),
            allow_imported: self.allow_imported,
        };
        if trusted.pcr8.iter().any(|p| p.is_zero()) {
            bail!("--pcr8 all zero is every unsigned image's PCR8; name a signer");
        }
        Ok(nekms_keys::origin::verify_origin(r, &verifier, &trusted)?)
    }
}

// The administrator's KMS client, which `nekms privval` reaches through here.

#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// Create the DynamoDB table (on-demand capacity; an existing table with the right key is fine)
    CreateTable {
        #[command(flatten)]
        store: StoreArg,
    },
}

pub(crate) async fn record(store: &Store, name: &str) -> anyhow::Result<KeyRecord> {
    store.get(name).await?.ok_or_else(|| crate::exit::not_found(format!("no key named {name:?} in the store")))
}

fn summary(r: &KeyRecord) -> serde_json::Value {
    let public = PublicKey::from_spki(&r.public_key).ok();
    json!({
        "key_id": r.key_id,
        "spec": r.spec,
        "origin": r.origin,
        "kms_key_id": r.kms_key_id,
        "created_at": r.created_at,
        "public_key_sha256": public.as_ref().map(|p| hex::encode(p.fingerprint())),
        "eth_address": public.as_ref().and_then(|p| p.eth_address()).map(|a| a.to_checksum(None)),
        // Present, not checked: `key verify-origin` checks it.
        "origin_document_bytes": r.attestation.as_ref().map_or(0, Vec::len),
    })
}

/// Store a new record; if the store fails, keep the record in a file so the
/// key is not lost.
pub(crate) async fn keep(store: &Store, record: &KeyRecord, json_out: bool) -> anyhow::Result<()> {
    if let Err(e) = store.create(record).await {
        let path = PathBuf::from(format!("{}.record.json", record.key_id.replace('/', "_")));
        std::fs::write(&path, serde_json::to_vec_pretty(record)?)?;
        bail!("{e}; the new record (public data) was saved to {} — add it later with `nekms key add {}`", path.display(), path.display());
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(record)?);
    } else {
        let s = summary(record);
        println!("created {} ({}, {})", record.key_id, record.spec, record.origin.as_str());
        println!("public key sha256: {}", s["public_key_sha256"].as_str().unwrap_or("?"));
        if let Some(a) = s["eth_address"].as_str() {
            println!("ethereum address: {a}");
        }
        println!("kms key: {}", record.kms_key_id);
    }
    Ok(())
}

fn nonce(hex: &Option<String>) -> anyhow::Result<Option<Vec<u8>>> {
    hex.as_deref().map(|h| super::hex_arg("--nonce", h)).transpose()
}

fn ciphertext_arg(file: &Option<PathBuf>, b64: &Option<String>) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(b) = b64 {
        return Ok(Some(B64.decode(b.trim()).context("--ciphertext is not base64")?));
    }
    let Some(p) = file else { return Ok(None) };
    let bytes = std::fs::read(p).with_context(|| p.display().to_string())?;
    // A file from `aws kms encrypt --output text` is base64; from fileb:// or the SDK, binary.
    let text = std::str::from_utf8(&bytes)
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=\n\r".contains(&b)));
    Ok(Some(match text.and_then(|t| B64.decode(t).ok()) {
        Some(decoded) => decoded,
        None => bytes,
    }))
}

pub fn run_key(cmd: KeyCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            KeyCommand::Create {
                enclave,
                store,
                name,
                spec,
                kms_key,
                entropy,
                context,
                nonce: n,
                decrypt,
                privval,
                decrypt_only,
                json,
            } => {
                let store = store.open().await?;
                if store.get(&name).await?.is_some() {
                    bail!("a key named {name:?} already exists");
                }
                let request = GenerateKey {
                    key_id: name,
                    spec,
                    kms_key_id: kms_key,
                    entropy,
                    encryption_context: nekms_keys::context::parse_pairs(&context).map_err(anyhow::Error::msg)?,
                    nonce: nonce(&n)?,
                    decrypt,
                    privval,
                    decrypt_only,
                };
                let record = enclave.connect().await?.generate_key(request).await?;
                keep(&store, &record, json).await
            }
            KeyCommand::Import {
                enclave,
                store,
                name,
                spec,
                kms_key,
                ciphertext_file,
                ciphertext,
                secret_id,
                secrets_endpoint_url,
                ciphertext_context,
                context,
                nonce: n,
                decrypt,
                privval,
                json,
            } => {
                let store = store.open().await?;
                if store.get(&name).await?.is_some() {
                    bail!("a key named {name:?} already exists");
                }
                let blob = match (ciphertext_arg(&ciphertext_file, &ciphertext)?, &secret_id) {
                    (Some(b), _) => b,
                    (None, Some(id)) => nekms_parent::secrets::ciphertext(id, secrets_endpoint_url.as_deref()).await?,
                    (None, None) => bail!("give the key's KMS ciphertext: --ciphertext-file, --ciphertext or --secret-id"),
                };
                let request = ImportKey {
                    key_id: name,
                    spec: Some(spec),
                    kms_key_id: kms_key,
                    ciphertext: blob,
                    ciphertext_context: nekms_keys::context::parse_pairs(&ciphertext_context).map_err(anyhow::Error::msg)?,
                    ciphertext_key_id: None,
                    encryption_context: nekms_keys::context::parse_pairs(&context).map_err(anyhow::Error::msg)?,
                    nonce: nonce(&n)?,
                    decrypt,
                    privval,
                };
                let record = enclave.connect().await?.import_key(request).await?;
                keep(&store, &record, json).await
            }
            KeyCommand::Add { store, record, origin } => {
                let text = if record.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())?
                } else {
                    std::fs::read_to_string(&record).with_context(|| record.display().to_string())?
                };
                let r: KeyRecord = serde_json::from_str(&text).context("not a key record (JSON)")?;
                let origin = origin
                    .verify(&r)
                    .map_err(|e| crate::exit::verification(e.context(format!("key record {} was not added", r.key_id))))?;
                store.open().await?.create(&r).await?;
                println!("added {} (origin checked: made by the image with PCR0 {})", r.key_id, origin.pcr0);
                Ok(())
            }
            KeyCommand::VerifyOrigin { store, name, origin, json } => {
                let r = record(&store.open_existing().await?, &name).await?;
                let checked = origin.verify(&r).map_err(crate::exit::verification)?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({"key_id": r.key_id, "origin_verified": true, "origin": r.origin, "document": checked})
                        )?
                    );
                } else {
                    println!(
                        "origin verified: {} ({}, {}) was made by the enclave image with PCR0 {}",
                        r.key_id,
                        r.spec,
                        r.origin.as_str(),
                        checked.pcr0
                    );
                    if checked.pcr8.bytes().any(|b| b != b'0') {
                        println!("  signed by the image signer with PCR8 {}", checked.pcr8);
                    }
                    let at = nekms_parent::credentials::time_text(checked.timestamp / 1000);
                    println!("  document signed at {at} by {}", checked.module_id);
                    println!("  commitment {}", checked.commitment);
                }
                Ok(())
            }
            KeyCommand::EncryptForImport { name, spec, kms_key, key_file, context, out, endpoint_url, profile, decrypt, privval } => {
                nekms_keys::record::check_key_id(&name)?;
                let secret = zeroize::Zeroizing::new(std::fs::read(&key_file).with_context(|| key_file.display().to_string())?);
                // Refuse now what the enclave would refuse at import; the spec goes into the context.
                let spec = nekms_keys::parse_private_key(&secret, spec)?.spec();
                let extra = nekms_keys::context::parse_pairs(&context).map_err(anyhow::Error::msg)?;
                let blob = nekms_parent::import::encrypt_for_import(
                    &nekms_parent::import::admin_kms(endpoint_url.as_deref(), profile.as_deref()).await,
                    &name,
                    spec,
                    &kms_key,
                    &secret,
                    &extra,
                    Usage::from_flags(decrypt, privval).map_err(anyhow::Error::msg)?,
                )
                .await?;
                match out {
                    Some(path) => {
                        std::fs::write(&path, &blob).with_context(|| path.display().to_string())?;
                        eprintln!("wrote the import ciphertext for {name} to {}", path.display());
                    }
                    None => println!("{}", B64.encode(&blob)),
                }
                let flag = if decrypt {
                    " --decrypt"
                } else if privval {
                    " --privval"
                } else {
                    ""
                };
                eprintln!("import it with: nekms key import --name {name} --spec {spec}{flag} --ciphertext ...");
                Ok(())
            }
            KeyCommand::List { store, json, page_size } => {
                let store = store.open_existing().await?;
                let (mut listed, mut damaged, mut after) = (Vec::new(), Vec::new(), None::<String>);
                loop {
                    let page = store.list(after.as_deref(), page_size).await?;
                    for r in &page.records {
                        let mut s = summary(r);
                        super::key_delete::annotate(&page, &mut s);
                        listed.push(s);
                    }
                    damaged.extend(page.damaged.iter().map(|d| json!({"key_id": d.key_id, "damaged": d.reason})));
                    match page.next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                if json {
                    println!("{}", serde_json::to_string_pretty(&listed.iter().chain(&damaged).collect::<Vec<_>>())?);
                } else {
                    for s in &listed {
                        let pending = s["pending_deletion"].as_str().map(|t| format!(" (deletion at {t})")).unwrap_or_default();
                        let (id, spec, origin) = (s["key_id"].as_str(), s["spec"].as_str(), s["origin"].as_str());
                        let eth = s["eth_address"].as_str().unwrap_or("");
                        println!("{:<24} {:<10} {:<9} {eth}{pending}", id.unwrap_or(""), spec.unwrap_or(""), origin.unwrap_or(""));
                    }
                    for d in &damaged {
                        println!("{:<24} DAMAGED: {}", d["key_id"].as_str().unwrap_or(""), d["damaged"].as_str().unwrap_or(""));
                    }
                    if listed.is_empty() && damaged.is_empty() {
                        eprintln!("no keys");
                    }
                }
                Ok(())
            }
            KeyCommand::Show { store, name, json, attestation_out } => {
                let (r, pending) = store
                    .open_existing()
                    .await?
                    .entry(&name)
                    .await?
                    .ok_or_else(|| crate::exit::not_found(format!("no key named {name:?} in the store")))?;
                if let Some(at) = pending {
                    eprintln!("{name} is scheduled for deletion at {} and signs nothing meanwhile", nekms_store::rfc3339(at));
                }
                if let Some(path) = attestation_out {
                    let doc = r.attestation.as_ref().context("this record carries no attestation document")?;
                    std::fs::write(&path, doc).with_context(|| path.display().to_string())?;
                }
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    println!("{}", serde_json::to_string_pretty(&summary(&r))?);
                }
                Ok(())
            }
            KeyCommand::PublicKey { store, name, pem, address } => {
                let r = record(&store.open_existing().await?, &name).await?;
                let public = r.public()?;
                if address {
                    let a =
                        public.eth_address().with_context(|| format!("{name} is {}, not secp256k1: it has no Ethereum address", r.spec))?;
                    println!("{}", a.to_checksum(None));
                } else if pem {
                    print!("{}", public.to_pem());
                } else {
                    println!("{}", hex::encode(public.spki()));
                }
                Ok(())
            }
            KeyCommand::Delete { store, name, pending_days, now, yes } => {
                super::key_delete::delete(&store.open_existing().await?, &name, now, yes, pending_days).await
            }
            KeyCommand::CancelDeletion { store, name } => super::key_delete::cancel(&store.open_existing().await?, &name).await,
        }
    })
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// How a signature is printed: hex lines, or JSON.
pub fn print_signature(sig: &Signature, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(sig)?);
        return Ok(());
    }
    println!("scheme: {}", sig.scheme);
    println!("signature: {}", hex::encode(&sig.signature));
    if !sig.digest.is_empty() {
        println!("digest: {}", hex::encode(&sig.digest));
    }
    if let (Some(raw), Some(hash)) = (&sig.raw_transaction, &sig.transaction_hash) {
        println!("raw_transaction: 0x{}", hex::encode(raw));
        println!("transaction_hash: 0x{}", hex::encode(hash));
    }
    Ok(())
}

pub fn run_sign(a: SignArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let r = record(&a.store.open_existing().await?, &a.key).await?;
        let (payload, implied) = a.payload.resolve()?;
        let scheme = a.scheme.or(implied);
        let sig = a.enclave.connect().await?.sign(r, scheme, payload).await?;
        if let Some(path) = &a.out {
            std::fs::write(path, &sig.signature).with_context(|| path.display().to_string())?;
        }
        print_signature(&sig, a.json)
    })
}

pub fn run_verify(a: VerifyArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let public = match (&a.key, &a.public_key) {
            (Some(name), _) => record(&a.store.open_existing().await?, name).await?.public()?,
            (None, Some(path)) => PublicKey::parse(&std::fs::read(path).with_context(|| path.display().to_string())?)?,
            (None, None) => return Err(crate::exit::usage("give --key NAME or --public-key FILE")),
        };
        let signature = match (&a.signature, &a.signature_file) {
            (Some(h), _) => super::hex_arg("--signature", h.trim_start_matches("0x"))?,
            (None, Some(p)) => std::fs::read(p).with_context(|| p.display().to_string())?,
            (None, None) => return Err(crate::exit::usage("give --signature HEX or --signature-file FILE")),
        };
        let (payload, implied) = a.payload.resolve()?;
        let scheme = a.scheme.or(implied).unwrap_or_else(|| Scheme::default_for(public.spec()));
        public.verify(scheme, &payload, &signature).map_err(|e| crate::exit::verification(e.into()))?;
        println!("signature OK ({scheme}, {} key {})", public.spec(), hex::encode(public.fingerprint()));
        Ok(())
    })
}

pub fn run_store(cmd: StoreCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            StoreCommand::CreateTable { store } => match store.url()? {
                StoreUrl::DynamoDb(table) => {
                    let s = DynamoStore::from_env(&table, store.endpoint_url.as_deref()).await;
                    if s.create_table().await? {
                        println!("created table {table}");
                    } else {
                        println!("table {table} already exists");
                    }
                    Ok(())
                }
                StoreUrl::Sqlite(p) => {
                    nekms_store::SqliteStore::open(&p)?;
                    println!("{} is ready (SQLite creates its table when opened)", p.display());
                    Ok(())
                }
            },
        }
    })
}

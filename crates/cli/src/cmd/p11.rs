//! `nekms p11 ...`: PKCS#11 tokens in the enclave, provisioned from the parent.
//!
//! The flags, turned into calls of `nekms-p11-provision`, which keeps the
//! token database (PIN verifiers, key names, certificates; never a PIN) and
//! does the work; this file prints what it reports.

use std::path::PathBuf;

use anyhow::Context;
use nekms_p11_provision::{acm, describe, provision, Enclave, KeyStoreLocation};

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
        match &self.db {
            Some(p) => Ok(p.clone()),
            None => nekms_p11_provision::db::default_path().context("neither XDG_DATA_HOME nor HOME is set; give --db"),
        }
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

fn enclave(e: &EnclaveArg) -> anyhow::Result<Enclave> {
    Ok(Enclave::new(e.address()?))
}

fn store(s: &StoreArg) -> anyhow::Result<KeyStoreLocation> {
    Ok(KeyStoreLocation::new(s.url()?, s.endpoint_url.clone()))
}

impl TokenSpec {
    fn token(&self) -> nekms_p11_provision::TokenSpec {
        nekms_p11_provision::TokenSpec {
            label: self.label.clone(),
            pin_file: self.pin_file.clone(),
            keys: self.keys.clone(),
            certs: self.certs.clone(),
            decrypt: self.decrypt.clone(),
            writable: self.writable,
        }
    }
}

/// `nekms p11 token add` and `update`.
async fn add(t: TokenArgs, replace: bool) -> anyhow::Result<()> {
    let a = &t.spec;
    let path = a.db.path()?;
    let (enclave, store, spec) = (enclave(&t.enclave)?, store(&a.store)?, a.token());
    let slot = if replace {
        provision::update(&enclave, &store, &path, &spec).await?
    } else {
        provision::add(&enclave, &store, &path, &spec).await?
    };
    println!("token {:?} in slot {slot} ({} key(s)); database {}", a.label, a.keys.len(), path.display());
    Ok(())
}

pub fn run(c: Command) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        match c {
            Command::Token(TokenCommand::Add(a)) => add(a, false).await,
            Command::Token(TokenCommand::Update(a)) => add(a, true).await,
            Command::Token(TokenCommand::Describe { enclave: e, db, label, json }) => {
                let d = describe::describe_token(&enclave(&e)?, &db.path()?, &label).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&d.json())?);
                } else {
                    print!("{}", d.text());
                }
                Ok(())
            }
            Command::Device { enclave: e, json } => {
                let d = describe::device(&enclave(&e)?).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&d.json())?);
                } else {
                    print!("{}", d.text());
                }
                Ok(())
            }
            Command::Db(DbCommand::Pack { spec, replace }) => {
                let path = spec.db.path()?;
                provision::pack(&store(&spec.store)?, &path, &spec.token(), replace).await?;
                println!(
                    "token {:?} packed into {} ({} key(s)); `nekms p11 token restore` provisions it",
                    spec.label,
                    path.display(),
                    spec.keys.len()
                );
                Ok(())
            }
            Command::Acm(AcmCommand::Convert { input, token_label, kms_key, acm_kms_key, out, profile, endpoint_url }) => {
                let bundle = acm::convert(&acm::Conversion {
                    input: &input,
                    token: &token_label,
                    kms_key: &kms_key,
                    acm_kms_key: &acm_kms_key,
                    out: &out,
                    profile: profile.as_deref(),
                    endpoint: endpoint_url.as_deref(),
                })
                .await?;
                println!(
                    "{} key(s) converted for token {token_label:?}: {}; on the parent: nekms p11 acm import --in {} --pin-file PIN",
                    bundle.keys.len(),
                    out.display(),
                    out.display()
                );
                Ok(())
            }
            Command::Acm(AcmCommand::Import { enclave: e, store: s, db, input, pin_file }) => {
                let path = db.path()?;
                let imported = acm::import(&enclave(&e)?, &store(&s)?, &path, &input, &pin_file).await?;
                println!(
                    "token {:?} provisioned from ACM's database with {} key(s) (records {}); the database {}",
                    imported.token,
                    imported.records.len(),
                    imported.records.join(", "),
                    path.display()
                );
                Ok(())
            }
            Command::Token(TokenCommand::Remove { enclave: e, db, label }) => {
                provision::remove(&enclave(&e)?, &db.path()?, &label).await?;
                println!("token {label:?} removed");
                Ok(())
            }
            Command::Token(TokenCommand::Sync { enclave: e, store: s, db, label }) => {
                let added = provision::sync(&enclave(&e)?, &store(&s)?, &db.path()?, &label, |k| {
                    println!("key {} (CKA_ID {}) stored", k.name, k.id);
                })
                .await?;
                println!("token {label:?}: {added} generated key(s) stored");
                Ok(())
            }
            Command::Token(TokenCommand::Restore { enclave: e, store: s, db }) => {
                provision::restore(&enclave(&e)?, &store(&s)?, &db.path()?, |label| println!("token {label:?} restored")).await
            }
            Command::Slots { enclave: e, json } => {
                let slots = describe::slots(&enclave(&e)?).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&describe::slots_json(&slots))?);
                } else {
                    print!("{}", describe::slots_text(&slots));
                }
                Ok(())
            }
            Command::ModuleConfig { remote } => {
                print!("{}", nekms_p11_provision::p11_kit_module_file(&remote));
                Ok(())
            }
        }
    })
}

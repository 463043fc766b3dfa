//! `nekms migrate ...`: moving custody to another KMS key under a quorum
//! ([`nekms_keys::migration`]). The administrator plans (a nonce from the
//! running enclave, the records from the store, the target key's policy);
//! approvers read the statement and sign it offline with a key file or a KMS
//! key; anyone checks approvals against approvers and a threshold; the
//! enclave checks the whole of it, the target key and its policy read by
//! itself, before anything is sealed.

use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_keys::migration::{self, Approval, Statement};
use nekms_keys::RecordExt;
use nekms_rpc::{MigrateRequest, MigrateResponse, Request, Response};
use nekms_store::KeyStore;
use zeroize::Zeroizing;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write a migration statement and its manifest (DIR/statement.json, DIR/manifest.json) for the approvers
    Plan {
        #[command(flatten)]
        enclave: super::enclave::EnclaveArg,
        #[command(flatten)]
        store: super::key::StoreArg,
        /// The key to move custody to
        #[arg(long, value_name = "ARN")]
        target_kms_key: String,
        /// The signer(s) the target trusts (PCR8, hex)
        #[arg(long, value_name = "HEX", required_unless_present = "target_pcr0")]
        target_pcr8: Vec<String>,
        /// The image(s) the target trusts (PCR0, hex)
        #[arg(long, value_name = "HEX")]
        target_pcr0: Vec<String>,
        /// The target's migration window closes then (UTC, YYYY-MM-DDTHH:MM:SSZ), as its policy says
        #[arg(long, value_name = "TIME")]
        window_until: Option<String>,
        /// Only these records [default: every record under the source key]
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// How long the approvals may take: hours (72h) or a time (YYYY-MM-DDTHH:MM:SSZ); at most 30 days
        #[arg(long, value_name = "WHEN", default_value = "72h")]
        expires: String,
        /// KMS endpoint for reading the target's policy (the administrator's view) instead of the SDK's
        #[arg(long = "kms-endpoint-url", env = "AWS_ENDPOINT_URL_KMS", value_name = "URL")]
        kms_endpoint_url: Option<String>,
        /// AWS profile of the key administrator
        #[arg(long)]
        profile: Option<String>,
        /// The instance role the target's policy names [default: arn:aws:iam::ACCOUNT:role/nekms-instance, the target's account]
        #[arg(long, value_name = "ARN")]
        instance_role: Option<String>,
        /// The administrator the target's policy names [default: arn:aws:iam::ACCOUNT:role/nekms-key-admin]
        #[arg(long, value_name = "ARN")]
        admin_role: Option<String>,
        /// The directory to write to
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
    },
    /// Have the running enclave re-seal every record of the plan under the target, then spend the statement's nonce;
    /// the new records go into another store (the old one stays the rollback until the source key is deleted)
    Run {
        #[command(flatten)]
        enclave: super::enclave::EnclaveArg,
        #[command(flatten)]
        store: super::key::StoreArg,
        /// The plan's directory (statement.json, manifest.json)
        dir: PathBuf,
        /// An approval (repeatable)
        #[arg(long = "signature", value_name = "FILE", required = true)]
        signatures: Vec<PathBuf>,
        /// The store the migrated records go into: sqlite:PATH or dynamodb:TABLE (never the source store)
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Ask the running enclave to check a statement and its approvals as it will before re-sealing: nothing is sealed
    Check {
        #[command(flatten)]
        enclave: super::enclave::EnclaveArg,
        /// The plan's directory (statement.json)
        dir: PathBuf,
        /// An approval (repeatable)
        #[arg(long = "signature", value_name = "FILE", required = true)]
        signatures: Vec<PathBuf>,
    },
    /// Sign a migration statement as one approver (a detached approval, JSON), after printing what it says
    Approve {
        /// The statement (canonical JSON, as `migrate plan` writes it)
        statement: PathBuf,
        /// The approver's private key, PEM (Ed25519 or P-256, PKCS#8 or SEC1)
        #[arg(long, value_name = "PEM", required_unless_present = "kms_key", conflicts_with = "kms_key")]
        key_file: Option<PathBuf>,
        /// Sign with this KMS key instead (an ECC_NIST_P256 SIGN_VERIFY key; KMS Sign, ECDSA_SHA_256, RAW)
        #[arg(long, value_name = "ARN")]
        kms_key: Option<String>,
        /// KMS endpoint (the local KMS) instead of the SDK's
        #[arg(long, env = "AWS_ENDPOINT_URL_KMS", value_name = "URL")]
        endpoint_url: Option<String>,
        /// AWS profile of the approver
        #[arg(long)]
        profile: Option<String>,
        /// Where to write the approval
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Check approvals of a statement: which approvers they come from and whether they reach the threshold
    Verify {
        statement: PathBuf,
        /// An approval (repeatable)
        #[arg(long = "signature", value_name = "FILE", required = true)]
        signatures: Vec<PathBuf>,
        /// An approver's public key, PEM or DER SubjectPublicKeyInfo (repeatable)
        #[arg(long = "approver", value_name = "FILE", required = true)]
        approvers: Vec<PathBuf>,
        /// How many distinct approvers must have signed
        #[arg(long, value_name = "N")]
        threshold: usize,
    },
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| path.display().to_string())
}

/// A public key file, PEM or DER, as SPKI DER.
pub(crate) fn spki(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let bytes = read(path)?;
    let der = match std::str::from_utf8(&bytes).ok().filter(|t| t.contains("-----BEGIN PUBLIC KEY-----")) {
        Some(text) => {
            let body: String = text
                .lines()
                .skip_while(|l| !l.starts_with("-----BEGIN PUBLIC KEY-----"))
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .collect();
            B64.decode(body.trim()).with_context(|| format!("{}: not PEM", path.display()))?
        }
        None => bytes,
    };
    migration::check_approver(&der).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(der)
}

/// What an approver reads before signing.
fn describe(s: &Statement) -> String {
    let images = |i: &migration::Images| {
        let mut v: Vec<String> = i.pcr0.iter().map(|p| format!("PCR0 {p}")).collect();
        v.extend(i.pcr8.iter().map(|p| format!("PCR8 {p}")));
        v.join(" and ")
    };
    let mut out = format!(
        "move {} record(s) (manifest root {})\n  from custody key {}, re-sealed by the image with {}\n  to custody key {} (policy SHA-256 {}), trusting {}\n  \
         whose policy names the instance role {} and the administrator {}\n",
        s.records.count,
        s.records.root,
        s.source.custody_kms_key,
        images(&s.source.enclave),
        s.target.custody_kms_key,
        s.target.policy_sha256,
        images(&s.target.trust),
        s.target.roles.instance,
        s.target.roles.admin
    );
    if let Some(w) = &s.target.window_until {
        out.push_str(&format!("  the target's policy lets the source image seal migrated records until {w}\n"));
    }
    out.push_str(&format!("  valid until {}, for one boot of the source enclave (nonce {})\n", s.expires, s.nonce));
    out
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Plan { .. } => tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(plan(cmd)),
        Command::Run { enclave, store, dir, signatures, to } => {
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run_migration(enclave, store, dir, signatures, to))
        }
        Command::Check { enclave, dir, signatures } => {
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
                let statement = read(&dir.join("statement.json"))?;
                let approvals = approvals_from(&signatures)?;
                let client = enclave.connect().await?;
                match client.call(&Request::Migrate(MigrateRequest::Check { statement, approvals })).await? {
                    Response::Migrate(MigrateResponse::Checked(c)) => {
                        println!(
                        "the enclave accepts this migration: approved by {} of {} needed ({}); target {} with the policy the approvers saw \
                         (SHA-256 {}); checked at {}; nothing was sealed",
                        c.approvers.len(),
                        c.threshold,
                        c.approvers.join(", "),
                        c.target_key,
                        c.target_policy_sha256,
                        migration::format_utc(c.checked_at as i64).unwrap_or_default()
                    );
                        Ok(())
                    }
                    other => bail!("unexpected answer from the enclave: {other:?}"),
                }
            })
        }
        Command::Approve { statement, key_file, kms_key, endpoint_url, profile, output } => {
            let bytes = read(&statement)?;
            let parsed = Statement::parse(&bytes).with_context(|| statement.display().to_string())?;
            print!("{}", describe(&parsed));
            // The records themselves, when the plan's manifest is beside the statement.
            let manifest_path = statement.with_file_name("manifest.json");
            if manifest_path.exists() {
                let manifest: migration::Manifest = serde_json::from_slice(&read(&manifest_path)?).context("manifest.json")?;
                if manifest.root() != parsed.records.root || manifest.leaves.len() as u32 != parsed.records.count {
                    bail!("{}: not the manifest this statement approves; approve nothing", manifest_path.display());
                }
                for l in &manifest.leaves {
                    println!("  record {} ({}, first {}, public key SHA-256 {})", l.key_id, l.spec, l.first_origin, l.spki_sha256);
                }
            }
            let approval = match (key_file, kms_key) {
                (Some(path), _) => {
                    let pem = Zeroizing::new(read(&path)?);
                    let key = nekms_keys::parse_private_key(&pem, None).with_context(|| path.display().to_string())?;
                    migration::approve(&bytes, &key).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                }
                (None, Some(arn)) => tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(kms_approve(
                    &bytes,
                    &arn,
                    endpoint_url.as_deref(),
                    profile.as_deref(),
                ))?,
                (None, None) => unreachable!("clap requires one"),
            };
            std::fs::write(&output, serde_json::to_vec_pretty(&approval)?).with_context(|| output.display().to_string())?;
            let spki = B64.decode(&approval.approver)?;
            println!("approved as {} ({}): {}", migration::approver_id(&spki), approval.algorithm, output.display());
            Ok(())
        }
        Command::Verify { statement, signatures, approvers, threshold } => {
            let bytes = read(&statement)?;
            Statement::parse(&bytes).with_context(|| statement.display().to_string())?;
            let approvals = approvals_from(&signatures)?;
            let approvers = approvers.iter().map(spki).collect::<anyhow::Result<Vec<_>>>()?;
            if threshold > approvers.len() {
                bail!("--threshold {threshold} with {} approver(s): never reachable", approvers.len());
            }
            let ids =
                migration::check_quorum(&bytes, &approvals, &approvers, threshold).map_err(|e| crate::exit::verification(e.into()))?;
            println!("approved by {} of {threshold} needed: {}", ids.len(), ids.join(", "));
            Ok(())
        }
    }
}

/// An approval signed by a KMS key: GetPublicKey for the approver's SPKI, then
/// Sign over the approval message (RAW: KMS hashes it with SHA-256).
async fn kms_approve(statement: &[u8], arn: &str, endpoint: Option<&str>, profile: Option<&str>) -> anyhow::Result<Approval> {
    let kms = nekms_parent::import::admin_kms(endpoint, profile).await;
    let public =
        kms.get_public_key().key_id(arn).send().await.map_err(|e| anyhow::anyhow!("KMS GetPublicKey {arn}: {}", e.into_service_error()))?;
    if public.key_spec().map(|s| s.as_str()) != Some("ECC_NIST_P256") {
        bail!("{arn} is a {:?} key; a KMS approver is an ECC_NIST_P256 signing key", public.key_spec());
    }
    let spki = public.public_key().context("GetPublicKey gave no public key")?.as_ref().to_vec();
    let signed = kms
        .sign()
        .key_id(arn)
        .message(aws_sdk_kms::primitives::Blob::new(migration::message(statement)))
        .message_type(aws_sdk_kms::types::MessageType::Raw)
        .signing_algorithm(aws_sdk_kms::types::SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("KMS Sign {arn}: {}", e.into_service_error()))?;
    let signature = signed.signature().context("Sign gave no signature")?.as_ref();
    let approval = Approval { approver: B64.encode(&spki), algorithm: "ecdsa-p256-sha256".into(), signature: B64.encode(signature) };
    // What KMS returned must count, before anyone relies on it.
    migration::check_quorum(statement, std::slice::from_ref(&approval), &[spki], 1)?;
    Ok(approval)
}

/// `expires` as the statement's time: `72h` from now, or a time.
fn expiry(expires: &str) -> anyhow::Result<String> {
    if let Some(hours) = expires.strip_suffix('h') {
        let hours: i64 = hours.parse().with_context(|| format!("--expires {expires}"))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
        return migration::format_utc(now + hours * 3600).context("--expires: out of range");
    }
    migration::parse_utc(expires).with_context(|| format!("--expires {expires}: hours (72h) or YYYY-MM-DDTHH:MM:SSZ"))?;
    Ok(expires.to_owned())
}

async fn plan(cmd: Command) -> anyhow::Result<()> {
    let Command::Plan {
        enclave,
        store,
        target_kms_key,
        target_pcr8,
        target_pcr0,
        window_until,
        names,
        expires,
        kms_endpoint_url,
        profile,
        instance_role,
        admin_role,
        output,
    } = cmd
    else {
        unreachable!("plan")
    };
    let client = enclave.connect().await?;
    let described = client.describe().await?;
    let trust = described.trust.context("the enclave did not describe its trust settings")?;
    let [source] = &trust.custody_kms_keys[..] else {
        bail!("the enclave pins {} custody keys; a migration moves the records of one", trust.custody_kms_keys.len());
    };
    let pcr = |i: u16| described.pcrs.iter().find(|p| p.index == i).map(|p| hex::encode(&p.value)).unwrap_or_default();
    let source_images = if trust.custody_trust == "pcr8" {
        migration::Images { pcr0: vec![], pcr8: vec![pcr(8)] }
    } else {
        migration::Images { pcr0: vec![pcr(0)], pcr8: vec![] }
    };
    // The records under the source key, as the store holds them. A damaged record or one pending deletion cannot
    // move: say so now, since the old records become unusable once the source key is retired.
    let opened = store.open_existing().await?;
    let (mut all, mut after) = (Vec::new(), None::<String>);
    loop {
        let page = nekms_store::KeyStore::list(&opened, after.as_deref(), 500).await?;
        for d in &page.damaged {
            eprintln!("nekms migrate: warning: {} is damaged ({}) and is not in the plan", d.key_id, d.reason);
        }
        for (name, at) in &page.pending_deletion {
            eprintln!("nekms migrate: warning: {name} is scheduled for deletion at {} and is not in the plan", nekms_store::rfc3339(*at));
        }
        all.extend(page.records.into_iter().filter(|r| !page.pending_deletion.contains_key(&r.key_id)));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let records: Vec<_> = all.into_iter().filter(|r| r.kms_key_id == *source && (names.is_empty() || names.contains(&r.key_id))).collect();
    if let Some(missing) = names.iter().find(|n| !records.iter().any(|r| &r.key_id == *n)) {
        bail!("{missing}: no such record under {source}");
    }
    let leaves = records
        .iter()
        .map(|r| migration::Leaf {
            key_id: r.key_id.clone(),
            source_record_sha256: hex::encode(r.cache_digest()),
            // A record migrated before carries its first origin through.
            first_origin: match r.origin {
                nekms_keys::Origin::Migrated => r
                    .migration
                    .as_deref()
                    .and_then(|m| migration::MigrationProof::parse(m).ok())
                    .map(|p| p.leaf.first_origin)
                    .unwrap_or_default(),
                other => other.as_str().to_owned(),
            },
            spec: r.spec.to_string(),
            spki_sha256: migration::sha256_hex(&r.public_key),
        })
        .collect();
    let manifest = migration::Manifest::new(leaves)?;
    // The target's policy as the administrator reads it; the enclave reads it again itself.
    let kms = nekms_parent::import::admin_kms(kms_endpoint_url.as_deref(), profile.as_deref()).await;
    let got = kms
        .get_key_policy()
        .key_id(&target_kms_key)
        .policy_name("default")
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("KMS GetKeyPolicy {target_kms_key}: {}", e.into_service_error()))?;
    let policy: serde_json::Value = serde_json::from_str(got.policy().context("GetKeyPolicy gave no policy")?)?;
    let normalise = |v: Vec<String>| -> anyhow::Result<Vec<String>> {
        v.iter().map(|p| Ok(p.parse::<nekms_attestation::Pcr48>().map_err(|e| anyhow::anyhow!("{p}: {e}"))?.to_hex())).collect()
    };
    let nonce = match client.call(&Request::Migrate(MigrateRequest::Begin)).await? {
        Response::Migrate(MigrateResponse::Begun { nonce, .. }) => nonce,
        other => bail!("unexpected answer from the enclave: {other:?}"),
    };
    let statement = Statement {
        version: 1,
        kind: migration::KIND.into(),
        expires: expiry(&expires)?,
        nonce: B64.encode(nonce),
        records: migration::RecordSet { count: manifest.leaves.len() as u32, root: manifest.root() },
        source: migration::Source { custody_kms_key: source.clone(), enclave: source_images },
        target: migration::Target {
            roles: {
                let standard = nekms_parent::key_policy::Roles::standard(target_kms_key.split(':').nth(4).unwrap_or_default());
                migration::Roles { admin: admin_role.unwrap_or(standard.admin), instance: instance_role.unwrap_or(standard.instance) }
            },
            custody_kms_key: target_kms_key,
            policy_sha256: migration::policy_sha256(&policy),
            trust: migration::Images { pcr0: normalise(target_pcr0)?, pcr8: normalise(target_pcr8)? },
            window_until,
        },
    };
    let bytes = statement.to_bytes()?;
    std::fs::create_dir_all(&output).with_context(|| output.display().to_string())?;
    std::fs::write(output.join("statement.json"), &bytes)?;
    std::fs::write(output.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::write(output.join("target-policy.json"), serde_json::to_vec_pretty(&policy)?)?;
    print!("{}", describe(&statement));
    println!("wrote {}/statement.json, manifest.json and target-policy.json: give statement.json to the approvers", output.display());
    Ok(())
}

fn approvals_from(signatures: &[PathBuf]) -> anyhow::Result<Vec<Approval>> {
    signatures.iter().map(|p| serde_json::from_slice::<Approval>(&read(p)?).with_context(|| p.display().to_string())).collect()
}

/// Send the plan's records in batches, store what comes back, spend the nonce.
async fn run_migration(
    enclave: super::enclave::EnclaveArg,
    store: super::key::StoreArg,
    dir: PathBuf,
    signatures: Vec<PathBuf>,
    to: String,
) -> anyhow::Result<()> {
    let statement = read(&dir.join("statement.json"))?;
    let parsed = Statement::parse(&statement).with_context(|| dir.join("statement.json").display().to_string())?;
    let manifest: migration::Manifest = serde_json::from_slice(&read(&dir.join("manifest.json"))?).context("manifest.json")?;
    if manifest.root() != parsed.records.root || manifest.leaves.len() as u32 != parsed.records.count {
        bail!("manifest.json is not the manifest the statement approves");
    }
    let approvals = approvals_from(&signatures)?;
    let to_url: nekms_store::StoreUrl = to.parse().map_err(anyhow::Error::msg)?;
    if to_url == store.url()? {
        bail!("--to {to} is the source store; migrated records go into another one");
    }
    let source = store.open_existing().await?;
    let target = nekms_store::Store::open(&to_url, store.endpoint_url.as_deref()).await.with_context(|| format!("opening {to_url}"))?;
    let client = enclave.connect().await?;
    let mut done = 0;
    for batch in manifest.leaves.chunks(16) {
        let mut items = Vec::new();
        for leaf in batch {
            let record = source.get(&leaf.key_id).await?.with_context(|| format!("{}: not in the source store", leaf.key_id))?;
            if hex::encode(record.cache_digest()) != leaf.source_record_sha256 {
                bail!("{}: the stored record is not the one approved (changed since the plan)", leaf.key_id);
            }
            let proof = manifest.proof(&leaf.key_id).expect("a leaf of this manifest");
            items.push(nekms_rpc::MigrateItem { record, proof: serde_json::to_vec(&proof)? });
        }
        let request = MigrateRequest::Records { statement: statement.clone(), approvals: approvals.clone(), records: items };
        let records = match client.call(&Request::Migrate(request)).await? {
            Response::Migrate(MigrateResponse::Migrated { records }) => records,
            other => bail!("unexpected answer from the enclave: {other:?}"),
        };
        for r in &records {
            target.create(r).await.with_context(|| format!("storing the migrated {}", r.key_id))?;
        }
        done += records.len();
    }
    match client.call(&Request::Migrate(MigrateRequest::Finish { statement })).await? {
        Response::Migrate(MigrateResponse::Finished) => {}
        other => bail!("unexpected answer from the enclave: {other:?}"),
    }
    println!(
        "migrated {done} record(s) to {} in {to_url}; the statement is spent. Images the target trusts open them; the old records stay \
         usable by images the source key trusts until the source key is deleted",
        parsed.target.custody_kms_key
    );
    Ok(())
}

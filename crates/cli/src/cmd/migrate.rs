//! `nekms migrate approve|verify`: the approvers' side of a migration of
//! custody to another KMS key ([`nekms_keys::migration`]). An approver reads
//! the statement (canonical JSON), and signs it offline with a key file or
//! with a KMS key; anyone checks a set of approvals against the approvers
//! and threshold.

use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_keys::migration::{self, Approval, Statement};
use zeroize::Zeroizing;

#[derive(clap::Subcommand)]
pub enum Command {
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
fn spki(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
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
        "move {} record(s) (manifest root {})\n  from custody key {}, re-sealed by the image with {}\n  to custody key {} (policy SHA-256 {}), trusting {}\n",
        s.records.count,
        s.records.root,
        s.source.custody_kms_key,
        images(&s.source.enclave),
        s.target.custody_kms_key,
        s.target.policy_sha256,
        images(&s.target.trust)
    );
    if let Some(w) = &s.target.window_until {
        out.push_str(&format!("  the target's policy lets the source image seal migrated records until {w}\n"));
    }
    out.push_str(&format!("  valid until {}, for one boot of the source enclave (nonce {})\n", s.expires, s.nonce));
    out
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Approve { statement, key_file, kms_key, endpoint_url, profile, output } => {
            let bytes = read(&statement)?;
            let parsed = Statement::parse(&bytes).with_context(|| statement.display().to_string())?;
            print!("{}", describe(&parsed));
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
            let approvals = signatures
                .iter()
                .map(|p| serde_json::from_slice::<Approval>(&read(p)?).with_context(|| p.display().to_string()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let approvers = approvers.iter().map(spki).collect::<anyhow::Result<Vec<_>>>()?;
            if threshold > approvers.len() {
                bail!("--threshold {threshold} with {} approver(s): never reachable", approvers.len());
            }
            let ids = migration::check_quorum(&bytes, &approvals, &approvers, threshold)?;
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

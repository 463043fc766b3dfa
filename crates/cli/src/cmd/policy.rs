//! `nekms policy bootstrap|custody`: print the key policies of the two-step
//! custody setup ([`nekms_parent::key_policy`]) for an account and its roles, to
//! put on a real KMS key (`aws kms create-key --policy file://...`,
//! `aws kms put-key-policy ... --bypass-policy-lockout-safety-check`).
//! `nekms policy check FILE`: what a key policy lets whom do, in plain
//! words, and where it is written in a form AWS evaluates differently.

use anyhow::Context;
use nekms_parent::key_policy::{self, ImageTrust, Roles};

#[derive(clap::Args)]
pub struct RoleArgs {
    /// The AWS account id
    #[arg(long, value_name = "ID")]
    account: String,
    /// The instance role that carries the enclave's KMS calls [default: arn:aws:iam::ACCOUNT:role/nekms-instance]
    #[arg(long, value_name = "ARN")]
    instance_role: Option<String>,
    /// The key administrator's role [default: arn:aws:iam::ACCOUNT:role/nekms-key-admin]
    #[arg(long, value_name = "ARN")]
    admin_role: Option<String>,
}

impl RoleArgs {
    fn roles(&self) -> anyhow::Result<Roles> {
        if self.account.len() != 12 || !self.account.bytes().all(|b| b.is_ascii_digit()) {
            anyhow::bail!("--account {}: an AWS account id is 12 digits", self.account);
        }
        let mut roles = Roles::standard(&self.account);
        if let Some(r) = &self.instance_role {
            roles.instance = r.clone();
        }
        if let Some(r) = &self.admin_role {
            roles.admin = r.clone();
        }
        Ok(roles)
    }
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Step 1: the policy to create the custody key with (nobody may use it; the administrator may put the final policy).
    /// With --pcr8 (trust by signer) nothing is circular: this prints the final policy to create the key with at once
    Bootstrap {
        #[command(flatten)]
        roles: RoleArgs,
        /// PCR8 of a trusted image signer, hex (`nekms image pcr8 --cert`): print the final custody policy instead
        #[arg(long = "pcr8", value_name = "HEX")]
        pcr8: Vec<String>,
    },
    /// Step 3: the final custody policy naming the measured image(s), which locks the administrator out
    Custody {
        #[command(flatten)]
        roles: RoleArgs,
        /// PCR0 of a trusted enclave image, hex (repeatable: every image that makes or opens records)
        #[arg(long = "pcr0", value_name = "HEX", required_unless_present_any = ["images", "pcr8"])]
        pcr0: Vec<String>,
        /// PCR8 of a trusted image signer, hex (repeatable): every image its key signs, so rebuilt images keep the keys.
        /// With --pcr0 too, an image must match both
        #[arg(long = "pcr8", value_name = "HEX")]
        pcr8: Vec<String>,
        /// A trusted enclave image (EIF) whose PCR0 to name (or, with --use-pcr8, its signer's PCR8), measured here (repeatable)
        #[arg(long = "image", value_name = "EIF")]
        images: Vec<std::path::PathBuf>,
        /// Take PCR8 (the signer) from each --image, after checking its signature over its PCR0, instead of PCR0
        #[arg(long, requires = "images")]
        use_pcr8: bool,
        /// A migration target: until --window-until, images of this (the source's) signer may make data keys for
        /// migrated records (nekms:origin=migrated) under the key, never decrypt (repeatable; needs --pcr8 and no --pcr0)
        #[arg(long, value_name = "HEX", requires = "window_until")]
        window_from_pcr8: Vec<String>,
        /// When the migration window closes (UTC, YYYY-MM-DDTHH:MM:SSZ)
        #[arg(long, value_name = "TIME", requires = "window_from_pcr8")]
        window_until: Option<String>,
    },
    /// Say who can decrypt, mint ciphertext, change the policy or create grants, and flag forms AWS reads differently
    Check {
        /// The key policy (JSON), or - for standard input
        file: std::path::PathBuf,
        /// The account the policy belongs to (to recognise its root) [default: from the ARNs]
        #[arg(long, value_name = "ID")]
        account: Option<String>,
        #[arg(long)]
        json: bool,
        /// Exit 5 (verification failed) when there is any warning, to gate CI
        #[arg(long)]
        strict: bool,
    },
}

/// PCR values as lower-case hex, each 48 bytes; zero is refused for PCR8
/// (every unsigned image) and warned about for PCR0 (every debug image).
fn checked(flag: &str, values: Vec<String>) -> anyhow::Result<Vec<String>> {
    let mut parsed = Vec::new();
    for p in &values {
        let pcr = p.parse::<nekms_attestation::Pcr48>().map_err(|e| anyhow::anyhow!("{flag} {p}: {e}"))?;
        parsed.push(pcr.to_hex());
        if pcr.is_zero() {
            if flag != "--pcr0" {
                anyhow::bail!("{flag} all zero is what every unsigned image reports; name a signer's PCR8");
            }
            eprintln!("nekms policy: warning: PCR0 all zero admits every debug-mode enclave image");
        }
    }
    if flag == "--pcr8" && !parsed.is_empty() {
        eprintln!(
            "nekms policy: note: trust by signer rests on the signature over PCR0 being checked before PCR8 is reported; nitro-cli \
             checks it, and whether the Nitro hypervisor refuses an image started without that check is still to be confirmed \
             on AWS (docs/upgrades.md). Naming --pcr0 too makes an image match both."
        );
    }
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    if let Command::Check { file, account, json, strict } = &cmd {
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(file).with_context(|| file.display().to_string())?
        };
        let policy = nekms_kms_policy::Policy::parse(&text, true).map_err(|e| anyhow::anyhow!("not a key policy AWS would take: {e}"))?;
        let findings = nekms_kms_policy::check::check(&policy, account.as_deref());
        if *json {
            println!("{}", serde_json::to_string_pretty(&findings)?);
        } else {
            for f in &findings {
                println!("{}{}", if f.warning { "WARNING: " } else { "" }, f.text);
            }
            println!("{} warning(s)", findings.iter().filter(|f| f.warning).count());
        }
        let warnings = findings.iter().filter(|f| f.warning).count();
        if *strict && warnings > 0 {
            return Err(crate::exit::error(crate::exit::Class::VerificationFailed, format!("--strict: {warnings} warning(s)")));
        }
        return Ok(());
    }
    let policy = match cmd {
        Command::Check { .. } => unreachable!("answered above"),
        Command::Bootstrap { roles, pcr8 } if pcr8.is_empty() => key_policy::bootstrap(&roles.roles()?),
        Command::Bootstrap { roles, pcr8 } => {
            key_policy::custody_for(&roles.roles()?, &ImageTrust { pcr0: Vec::new(), pcr8: checked("--pcr8", pcr8)? })
        }
        Command::Custody { roles, mut pcr0, mut pcr8, images, use_pcr8, window_from_pcr8, window_until } => {
            for image in &images {
                let m = nekms_image::measure_file(image)?;
                let own = m.pcr(0).expect("every measurement has PCR0").to_string();
                if !use_pcr8 {
                    pcr0.push(own);
                    continue;
                }
                let signed = nekms_image::check_signature_file(image, &own)?
                    .ok_or_else(|| anyhow::anyhow!("{}: not signed, so it has no PCR8 to trust", image.display()))?;
                let years = (signed.not_after - time::OffsetDateTime::now_utc()).whole_days() / 365;
                if years < 5 {
                    eprintln!(
                        "nekms policy: warning: {}'s signing certificate expires {} (in {years} years): nitro-cli boots no image signed \
                         with an expired one, and a renewed certificate is another PCR8, so every key must migrate before then",
                        image.display(),
                        signed.not_after
                    );
                }
                pcr8.push(signed.pcr8.to_hex());
            }
            let trust = ImageTrust { pcr0: checked("--pcr0", pcr0)?, pcr8: checked("--pcr8", pcr8)? };
            match window_until {
                None => key_policy::custody_for(&roles.roles()?, &trust),
                Some(until) => {
                    if !trust.pcr0.is_empty() || trust.pcr8.is_empty() {
                        anyhow::bail!("a migration window is for a target trusting signers: give --pcr8 (and no --pcr0)");
                    }
                    if nekms_keys::migration::parse_utc(&until).is_none() {
                        anyhow::bail!("--window-until {until}: write it YYYY-MM-DDTHH:MM:SSZ (UTC)");
                    }
                    let from_pcr8 = checked("--window-from-pcr8", window_from_pcr8)?;
                    if from_pcr8.iter().any(|p| trust.pcr8.contains(p)) {
                        anyhow::bail!("--window-from-pcr8 names a signer the target trusts anyway");
                    }
                    key_policy::migration_target(&roles.roles()?, &trust, &key_policy::MigrationWindow { from_pcr8, until })
                }
            }
        }
    };
    println!("{}", serde_json::to_string_pretty(&policy)?);
    Ok(())
}

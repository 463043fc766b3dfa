//! `nekms policy bootstrap|custody`: print the key policies of the two-step
//! custody setup ([`nekms_parent::key_policy`]) for an account and its roles, to
//! put on a real KMS key (`aws kms create-key --policy file://...`,
//! `aws kms put-key-policy ... --bypass-policy-lockout-safety-check`).
//! `nekms policy check FILE`: what a key policy lets whom do, in plain
//! words, and where it is written in a form AWS evaluates differently.

use nekms_parent::key_policy::{self, Roles};

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
    /// Step 1: the policy to create the custody key with (nobody may use it; the administrator may put the final policy)
    Bootstrap(RoleArgs),
    /// Step 3: the final custody policy naming the measured image(s), which locks the administrator out
    Custody {
        #[command(flatten)]
        roles: RoleArgs,
        /// PCR0 of a trusted enclave image, hex (repeatable: every image that makes or opens records)
        #[arg(long = "pcr0", value_name = "HEX", required_unless_present = "images")]
        pcr0: Vec<String>,
        /// A trusted enclave image (EIF) whose PCR0 to name, measured here (repeatable)
        #[arg(long = "image", value_name = "EIF")]
        images: Vec<std::path::PathBuf>,
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
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    if let Command::Check { file, account, json } = &cmd {
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
        };
        let policy = nekms_kms_policy::Policy::parse(&text, true).map_err(|e| anyhow::anyhow!("not a key policy AWS would take: {e}"))?;
        let findings = nekms_kms_policy::check::check(&policy, account.as_deref());
        if *json {
            println!("{}", serde_json::to_string_pretty(&findings)?);
        } else {
            for f in &findings {
                println!("{}{}", if f.warning { "WARNING: " } else { "" }, f.text);
            }
            let warnings = findings.iter().filter(|f| f.warning).count();
            println!("{} warning(s)", warnings);
        }
        return Ok(());
    }
    let policy = match cmd {
        Command::Check { .. } => unreachable!("answered above"),
        Command::Bootstrap(r) => key_policy::bootstrap(&r.roles()?),
        Command::Custody { roles, mut pcr0, images } => {
            for image in &images {
                let m = nekms_image::measure_file(image)?;
                pcr0.push(m.pcr(0).expect("every measurement has PCR0").to_string());
            }
            for p in &pcr0 {
                p.parse::<nekms_attestation::Pcr48>().map_err(|e| anyhow::anyhow!("--pcr0 {p}: {e}"))?;
                if p.bytes().all(|b| b == b'0') {
                    eprintln!("nekms policy: warning: PCR0 all zero admits every debug-mode enclave image");
                }
            }
            key_policy::custody(&roles.roles()?, &pcr0.iter().map(|p| p.to_ascii_lowercase()).collect::<Vec<_>>())
        }
    };
    println!("{}", serde_json::to_string_pretty(&policy)?);
    Ok(())
}

//! `nekms dev ...`: the development world.

use std::path::PathBuf;

use crate::DirArg;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create the development root, intermediate, principals, AWS profiles, TLS CA, image signer and the world's
    /// custody key (idempotent: what exists is kept)
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// Make a new custody key for the world even though DEV/custody.toml names one (records made under the old
        /// key stay unusable)
        #[arg(long)]
        new_custody_key: bool,
    },
    /// Run the local KMS (the same server as `nekms-kms`), or read its audit log
    #[command(args_conflicts_with_subcommands = true)]
    Kms {
        #[command(subcommand)]
        command: Option<KmsCommand>,
        #[command(flatten)]
        serve: Box<nekms_kms::run::ServeArgs>,
    },
    /// Start the local KMS (HTTPS), the proxy and a simulated enclave as separate processes; Ctrl-C stops them
    Up(Box<super::up::Args>),
    /// Boot an enclave image (EIF) in a guest VM over real vsock, measured by this launcher; Ctrl-C stops it
    Vm(Box<super::vm::Args>),
    /// Run the enclave program from this executable (what `dev up` uses when nekms-enclave is not built)
    #[command(hide = true)]
    Enclave(Box<nekms_enclave::app::Cli>),
}

#[derive(clap::Subcommand)]
pub enum KmsCommand {
    /// Show the local KMS's audit log readably (one line per request)
    Audit {
        #[command(flatten)]
        dir: DirArg,
        /// The audit log [default: DIR/kms/audit.log]
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        /// Keep printing new requests as they arrive
        #[arg(short, long)]
        follow: bool,
        /// Print the raw CloudTrail-shaped JSON lines
        #[arg(long)]
        json: bool,
        /// Only the last N requests
        #[arg(short = 'n', long, value_name = "N")]
        lines: Option<usize>,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Init { dir, new_custody_key } => {
            let dir = dir.resolve()?;
            print!("{}", dir.init()?);
            let world = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(async {
                let local = nekms_dev::kms::InProcessKms::start(&dir, &dir.kms_data(), false).await?;
                nekms_dev::world_custody::ensure(&dir, &local.target(&dir, "admin")?, new_custody_key).await
            })?;
            println!(
                "  {} custody.toml: custody key {} in {}, trusting images the development signer signs (PCR8 {})",
                if world.created { "created" } else { "kept   " },
                world.arn,
                dir.kms_data().display(),
                world.pcr8
            );
            println!("root certificate: {}", dir.root_cert_path().display());
            println!("principals of account {}:", dir.config()?.account_id);
            for p in dir.principals()? {
                println!("  {:<9} {}", p.name, p.arn);
            }
            println!(
                "use them with: AWS_SHARED_CREDENTIALS_FILE={} AWS_CONFIG_FILE={} aws --profile instance kms ...",
                dir.aws_credentials_path().display(),
                dir.aws_config_path().display()
            );
            Ok(())
        }
        Command::Up(a) => super::up::run(*a),
        Command::Vm(a) => super::vm::run(*a),
        Command::Enclave(cli) => nekms_enclave::app::run(*cli),
        Command::Kms { command: None, serve } => nekms_kms::run::run(*serve).map_err(anyhow::Error::msg),
        Command::Kms { command: Some(KmsCommand::Audit { dir, log, follow, json, lines }), .. } => {
            let log = match log {
                Some(l) => l,
                None => dir.resolve()?.path().join("kms/audit.log"),
            };
            nekms_dev::audit::read(&log, lines, follow, |line| print_line(line, json))
        }
    }
}

fn print_line(line: &str, json: bool) {
    if json {
        println!("{line}");
        return;
    }
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v) => println!("{}", nekms_kms::audit::render(&v)),
        Err(_) => println!("(unreadable line) {line}"),
    }
}

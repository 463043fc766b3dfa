//! `nekms dev ...`: the development world.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use crate::DirArg;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create the development root, intermediate, principals, AWS profiles and TLS CA (idempotent)
    Init {
        #[command(flatten)]
        dir: DirArg,
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
        Command::Init { dir } => {
            let dir = dir.resolve()?;
            print!("{}", dir.init()?);
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
        Command::Enclave(cli) => nekms_enclave::app::run(*cli),
        Command::Kms { command: None, serve } => nekms_kms::run::run(*serve).map_err(anyhow::Error::msg),
        Command::Kms { command: Some(KmsCommand::Audit { dir, log, follow, json, lines }), .. } => {
            let log = match log {
                Some(l) => l,
                None => dir.resolve()?.path().join("kms/audit.log"),
            };
            audit(&log, follow, json, lines)
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

fn audit(path: &std::path::Path, follow: bool, json: bool, last: Option<usize>) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e} (has the local KMS run with this directory?)", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut lines: Vec<String> = Vec::new();
    let mut buf = String::new();
    while reader.read_line(&mut buf)? > 0 {
        if buf.ends_with('\n') {
            lines.push(buf.trim_end().to_owned());
            buf.clear();
        }
    }
    let skip = last.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
    for l in &lines[skip..] {
        print_line(l, json);
    }
    if !follow {
        return Ok(());
    }
    loop {
        let n = reader.read_line(&mut buf)?;
        if n == 0 {
            std::thread::sleep(Duration::from_millis(200));
            // A rotated or truncated log starts over.
            let pos = reader.stream_position()?;
            if std::fs::metadata(path).map(|m| m.len() < pos).unwrap_or(false) {
                reader.seek(SeekFrom::Start(0))?;
            }
            continue;
        }
        if buf.ends_with('\n') {
            print_line(buf.trim_end(), json);
            buf.clear();
        }
    }
}

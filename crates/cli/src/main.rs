//! `nekms`: the parent-side command line. It parses arguments and wires the
//! libraries together; the work is done in the `nekms-*` crates.
//!
//! The default `dev` feature adds the development world: `nekms demo`,
//! `nekms dev` (up, kms, enclave), `nekms bench`, `nekms attest sim` and
//! `--dev-root`, with the local KMS, the simulated NSM and an in-process
//! enclave; their work is done in `nekms-dev`. A production build leaves
//! all of it out: `cargo build --release -p nekms --no-default-features`.
#![forbid(unsafe_code)]

mod cmd;
mod exit;

#[cfg(feature = "dev")]
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "nekms", version, about = "Keys and secrets usable only inside an attested AWS Nitro Enclave")]
struct Cli {
    #[command(flatten)]
    log: nekms_log::LogArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where the development world lives (shared by every command that needs it).
#[cfg(feature = "dev")]
#[derive(clap::Args, Clone, Debug)]
pub struct DirArg {
    /// Development directory [default: $XDG_DATA_HOME/nekms/dev or ~/.local/share/nekms/dev]
    #[arg(long, env = nekms_devworld::DEV_DIR_ENV, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[cfg(feature = "dev")]
impl DirArg {
    pub fn resolve(&self) -> anyhow::Result<nekms_devworld::DevDir> {
        Ok(nekms_devworld::DevDir::resolve(self.dir.as_deref())?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the main flows end to end on the embedded development world
    #[cfg(feature = "dev")]
    Demo(cmd::demo::Args),
    /// The development world (PKI and configuration)
    #[cfg(feature = "dev")]
    #[command(subcommand)]
    Dev(cmd::dev::Command),
    /// PCR measurements
    #[command(subcommand)]
    Pcr(cmd::pcr::Command),
    /// The enclave image (EIF): build, sign and measure it without Docker, describe any EIF
    #[command(subcommand)]
    Image(cmd::image::Command),
    /// Attestation documents: verify them (development builds also make simulated ones)
    #[command(subcommand)]
    Attest(cmd::attest::Command),
    /// CMS EnvelopedData (KMS CiphertextForRecipient): inspect and decrypt
    #[command(subcommand)]
    Cms(cmd::cms::Command),
    /// Forward the enclave's connections to an allowlisted remote (like vsock-proxy)
    Proxy(cmd::proxy::Args),
    /// Talk to a running enclave: describe it, get attestation documents, push AWS credentials
    #[command(subcommand)]
    Enclave(cmd::enclave::Command),
    /// kmstool-instance's job: credentials and a ciphertext to the enclave's kmstool port
    #[command(subcommand)]
    Kmstool(Box<cmd::kmstool::Command>),
    /// Keys made or imported inside the enclave, stored on the parent as sealed records
    #[command(subcommand)]
    Key(Box<cmd::key::KeyCommand>),
    /// Sign with a stored key, inside the enclave
    Sign(Box<cmd::key::SignArgs>),
    /// Check a signature with a stored key's public key, or a public key file
    Verify(Box<cmd::key::VerifyArgs>),
    /// The HTTP API for applications on the parent (keys, signing, attestation, metrics), on 127.0.0.1
    Agent(Box<cmd::agent::Args>),
    /// The key store (create the DynamoDB table)
    #[command(subcommand)]
    Store(cmd::key::StoreCommand),
    /// The enclave's audit trail: collect it on the parent, verify a file of it
    #[command(subcommand)]
    Audit(cmd::audit::Command),
    /// The enclave's log lines on the parent
    #[command(subcommand)]
    Logs(cmd::logs::Command),
    /// The custody key's policies: the bootstrap one, and the final one naming the measured image
    #[command(subcommand)]
    Policy(cmd::policy::Command),
    /// Moving custody to another KMS key under a quorum: approve a migration statement, check approvals
    #[command(subcommand)]
    Migrate(cmd::migrate::Command),
    /// PKCS#11 tokens in the enclave (for libnekms_p11.so behind p11-kit): add, update, remove, restore, slots
    #[command(subcommand)]
    P11(cmd::p11::Command),
    /// The validator signer (CometBFT privval): push tmkms.toml, proxy validators, persist its state, status
    #[command(subcommand)]
    Privval(cmd::privval::Command),
    /// Measure nekms against a reference measured in the same run
    #[cfg(feature = "dev")]
    #[command(subcommand)]
    Bench(cmd::bench::Command),
}

/// mimalloc, as in the enclave: the daemons (agent, proxy, collectors) and
/// the benches allocate per request from many threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    exit::install_panic_hook();
    let cli = Cli::parse();
    let format = cli.log.format();
    nekms_log::init("nekms", format);
    let result = match cli.command {
        #[cfg(feature = "dev")]
        Command::Demo(a) => cmd::demo::run(a),
        Command::Policy(c) => cmd::policy::run(c),
        Command::P11(c) => cmd::p11::run(c),
        Command::Migrate(c) => cmd::migrate::run(c),
        Command::Privval(c) => cmd::privval::run(c),
        #[cfg(feature = "dev")]
        Command::Dev(c) => cmd::dev::run(c),
        Command::Pcr(c) => cmd::pcr::run(c),
        Command::Image(c) => cmd::image::run(c),
        Command::Attest(c) => cmd::attest::run(c),
        Command::Cms(c) => cmd::cms::run(c),
        #[cfg(feature = "dev")]
        Command::Bench(c) => cmd::bench::run(c),
        Command::Proxy(a) => cmd::proxy::run(a),
        Command::Enclave(c) => cmd::enclave::run(c),
        Command::Kmstool(c) => cmd::kmstool::run(*c),
        Command::Key(c) => cmd::key::run_key(*c),
        Command::Sign(a) => cmd::key::run_sign(*a),
        Command::Verify(a) => cmd::key::run_verify(*a),
        Command::Store(c) => cmd::key::run_store(c),
        Command::Agent(a) => cmd::agent::run(*a),
        Command::Audit(c) => cmd::audit::run(c),
        Command::Logs(c) => cmd::logs::run(c),
    };
    if let Err(e) = result {
        let code = exit::classify(&e) as i32;
        match format {
            // A daemon's last line in the same shape as the others.
            nekms_log::Format::Json => tracing::error!(exit = code, "{e:#}"),
            nekms_log::Format::Text => eprintln!("nekms: {e:#}"),
        }
        std::process::exit(code);
    }
}

//! `nekms-kms`: the local AWS KMS (the same server as `nekms dev kms`).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "nekms-kms",
    version,
    about = "A local AWS KMS that enforces enclave attestation (KMS JSON 1.1 over HTTP/HTTPS, SigV4, key policies, Recipient)"
)]
struct Cli {
    #[command(flatten)]
    log: nekms_log::LogArgs,
    #[command(flatten)]
    serve: nekms_kms::run::ServeArgs,
}

fn main() {
    let cli = Cli::parse();
    nekms_log::init("nekms-kms", cli.log.format());
    if let Err(e) = nekms_kms::run::run(cli.serve) {
        nekms_log::fatal("nekms-kms", &format_args!("{e:#}"));
        std::process::exit(1);
    }
}

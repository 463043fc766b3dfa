//! `nekms-enclave`: see the library documentation.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "nekms-enclave",
    version,
    about = "The nekms enclave: the native RPC and kmstool's protocol, KMS through the parent's proxy with attestation"
)]
struct Main {
    #[command(flatten)]
    cli: nekms_enclave::app::Cli,
}

/// mimalloc: glibc's malloc took a fifth of the CPU of a signature served
/// through the agent, most of it in the enclave's and the agent's tasks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if let Err(e) = nekms_enclave::app::run(Main::parse().cli) {
        if !e.is::<nekms_enclave::app::Reported>() {
            nekms_log::fatal(nekms_enclave::app::PROGRAM, &format_args!("{e:#}"));
        }
        std::process::exit(1);
    }
}

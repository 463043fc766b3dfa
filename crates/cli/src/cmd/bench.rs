//! `nekms bench ...`: the flags of each benchmark; the measurements are
//! `nekms_dev::bench`'s.

use std::path::PathBuf;

use nekms_dev::bench;
use nekms_keys::KeySpec;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Requests per second of the local KMS vs moto's KMS (Encrypt, Decrypt, GenerateDataKey, Decrypt with Recipient)
    Kms(KmsArgs),
    /// kmstool Decrypt through enclave -> proxy -> local KMS, and the proxy against a direct connection
    Kmstool(KmstoolArgs),
    /// Signatures per second in process vs through the enclave RPC vs through the agent, and cold-signature latency
    Sign(SignArgs),
    /// Sign per second through the agent's KMS API (SigV4) vs in process vs the local KMS's own asymmetric Sign, and where the time goes
    KmsApi(KmsApiArgs),
    /// PKCS#11 C_Sign per second through p11-kit: libnekms_p11.so vs SoftHSM2, one and two connections, direct, first signature
    P11(P11Args),
    /// Validator signing: prevote/precommit latency and signatures/s, nekms (with and without fsync) vs tmkms 0.15.0, Unix and TCP+SecretConnection, two chains
    Privval(PrivvalArgs),
    /// The enclave as an image in a guest VM vs as a process on the parent: start-up, memory, warm signature latency
    Vm(VmArgs),
    /// One client process of `bench p11`
    #[command(hide = true)]
    P11Worker(WorkerArgs),
}

#[derive(clap::Args)]
pub struct KmsArgs {
    /// Seconds to run each operation at each concurrency
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Concurrent clients to measure with
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    clients: Vec<usize>,
    /// Measure only the local KMS (no moto)
    #[arg(long)]
    no_moto: bool,
}

#[derive(clap::Args)]
pub struct VmArgs {
    /// The guest's blobs (as for dev up --vm-blobs)
    #[arg(long, value_name = "DIR")]
    vm_blobs: PathBuf,
    /// The guest's nekms-enclave: static, with the simulator
    #[arg(long, value_name = "FILE", env = "NEKMS_VM_ENCLAVE_BIN")]
    vm_enclave_bin: PathBuf,
    /// kvm, tcg, or auto
    #[arg(long, default_value = "auto")]
    vm_accel: String,
    /// The guest's memory
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    vm_memory: u32,
    /// Seconds per cell
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

#[derive(clap::Args)]
pub struct KmstoolArgs {
    /// Seconds per cell
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Concurrent kmstool clients to measure with
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
}

#[derive(clap::Args)]
pub struct SignArgs {
    /// Key specs to measure
    #[arg(long, value_delimiter = ',', default_value = "secp256k1,ed25519,p256,rsa2048")]
    spec: Vec<KeySpec>,
    /// Concurrent clients
    #[arg(long, value_delimiter = ',', default_value = "2")]
    clients: Vec<usize>,
    /// Calls each client keeps outstanding in (b) and (c)
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Seconds per cell
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Cold signatures to time per spec
    #[arg(long, default_value_t = 50)]
    cold: usize,
}

#[derive(clap::Args)]
pub struct KmsApiArgs {
    /// Key specs to measure
    #[arg(long, value_delimiter = ',', default_value = "secp256k1,p256,ed25519")]
    spec: Vec<KeySpec>,
    /// Keep-alive connections
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds per cell
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

#[derive(clap::Args)]
pub struct P11Args {
    /// Seconds per measurement
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// libnekms_p11.so [default: beside this executable]
    #[arg(long, value_name = "FILE")]
    module: Option<PathBuf>,
    /// Leave out the nginx TLS handshake measurement
    #[arg(long)]
    no_nginx: bool,
}

/// One client process's loop.
#[derive(clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    module: PathBuf,
    #[arg(long)]
    label: String,
    /// CKA_ID, hex
    #[arg(long)]
    id: String,
    /// rsa or ecdsa
    #[arg(long)]
    mech: String,
    #[arg(long)]
    seconds: f64,
}

#[derive(clap::Args)]
pub struct PrivvalArgs {
    /// Seconds per row
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// tmkms 0.15.0 built with softsign [default: $NEKMS_TMKMS_BIN, else ~/.cache/nekms/peers/tmkms-0.15.0/bin/tmkms]
    #[arg(long, value_name = "FILE")]
    tmkms: Option<PathBuf>,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match cmd {
        Command::Kms(a) => {
            runtime()?.block_on(bench::kms::run(&bench::kms::Options { seconds: a.seconds, clients: a.clients, no_moto: a.no_moto }))
        }
        Command::Kmstool(a) => {
            runtime()?.block_on(bench::kmstool::run(&bench::kmstool::Options { seconds: a.seconds, clients: a.clients }))
        }
        Command::Sign(a) => runtime()?.block_on(bench::sign::run(&bench::sign::Options {
            spec: a.spec,
            clients: a.clients,
            depth: a.depth,
            seconds: a.seconds,
            cold: a.cold,
        })),
        Command::KmsApi(a) => runtime()?.block_on(bench::kms_api::run(&bench::kms_api::Options {
            spec: a.spec,
            clients: a.clients.max(1),
            seconds: a.seconds,
        })),
        Command::P11(a) => {
            runtime()?.block_on(bench::p11::run(&bench::p11::Options { seconds: a.seconds, module: a.module, no_nginx: a.no_nginx }))
        }
        Command::Vm(a) => bench::vm::run(&bench::vm::Options {
            blobs: a.vm_blobs,
            enclave_bin: a.vm_enclave_bin,
            accel: a.vm_accel,
            memory_mib: a.vm_memory,
            seconds: a.seconds,
        }),
        Command::P11Worker(a) => {
            bench::p11::worker(&bench::p11::WorkerOptions { module: a.module, label: a.label, id: a.id, mech: a.mech, seconds: a.seconds })
        }
        Command::Privval(a) => runtime()?.block_on(bench::privval::run(&bench::privval::Options { seconds: a.seconds, tmkms: a.tmkms })),
    }
}

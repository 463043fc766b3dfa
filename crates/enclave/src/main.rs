//! `nekms-enclave`: see the library documentation.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use nekms_nsm::measure::Measurement;
use nekms_nsm::{Nsm, SimConfig, SimulatedNsm};

#[derive(Parser)]
#[command(name = "nekms-enclave", version, about = "The nekms enclave: kmstool's protocol, KMS through the parent's proxy with attestation")]
struct Cli {
    /// Settings file (TOML; the same names as the flags, e.g. kms-endpoint = "https://localhost:7701")
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    args: nekms_enclave::config::EnclaveArgs,
}

fn open_nsm(c: &nekms_enclave::config::EnclaveConfig) -> anyhow::Result<Arc<dyn Nsm>> {
    if !c.sim {
        let nsm = nekms_nsm::DeviceNsm::open().context("opening /dev/nsm (use --sim outside an enclave)")?;
        return Ok(Arc::new(nsm));
    }
    let dev = nekms_devworld::DevDir::resolve(c.dev_dir.as_deref())?;
    let image = match &c.image {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let measurement = Measurement::of_files(&image, None)?;
    let mut sim = SimConfig::new(measurement);
    sim.debug_mode = c.debug_mode;
    sim.parent_instance_id = dev.config().ok().map(|c| c.instance_id);
    Ok(Arc::new(SimulatedNsm::boot(sim, dev.document_signer()?)))
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("nekms-enclave: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let file = match &cli.config {
        Some(p) => nekms_enclave::config::EnclaveArgs::from_toml(&std::fs::read_to_string(p).with_context(|| p.display().to_string())?)
            .with_context(|| p.display().to_string())?,
        None => Default::default(),
    };
    let config = cli.args.resolve(file);
    let nsm = open_nsm(&config)?;
    let pcrs: Vec<String> = (0..3).map(|i| nsm.describe_pcr(i).map(|p| p.value.to_hex()).unwrap_or_default()).collect();
    let enclave = Arc::new(nekms_enclave::Enclave::new(nsm.clone(), &config)?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let kmstool = nekms_transport::Listener::bind(&config.kmstool.parse()?).await.with_context(|| format!("listening on {}", config.kmstool))?;
        eprintln!(
            "nekms-enclave: {} NSM; PCR0 {} PCR1 {} PCR2 {}",
            if nsm.is_simulated() { "simulated" } else { "hardware" },
            pcrs[0],
            pcrs[1],
            pcrs[2]
        );
        eprintln!("nekms-enclave: kmstool protocol on {}; KMS through {}", kmstool.local_address(), config.proxy);
        let serving = tokio::spawn(nekms_enclave::kmstool::serve(kmstool, enclave, config.max_message));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        serving.abort();
        anyhow::Ok(())
    })
}

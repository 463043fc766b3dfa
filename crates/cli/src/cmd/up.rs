//! `nekms dev up`: the local KMS (HTTPS), the proxy and a simulated enclave,
//! each its own process, under one supervisor (`nekms_dev::up`); this
//! prints what runs where.

use std::path::PathBuf;

use anyhow::bail;
use nekms_dev::up::{Options, Stopped};

use crate::DirArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dir: DirArg,
    /// Where sockets, logs and the ready file go [default: DIR/up]
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// The local KMS's plain HTTP listener, for the parent's aws CLI [default: the dev config's, 127.0.0.1:7700]
    #[arg(long, value_name = "IP:PORT")]
    kms_http: Option<String>,
    /// The local KMS's HTTPS listener, the enclave's endpoint [default: the dev config's, 127.0.0.1:7701]
    #[arg(long, value_name = "IP:PORT")]
    kms_https: Option<String>,
    /// Simulate an enclave started with --debug-mode (PCRs all zero)
    #[arg(long)]
    debug_mode: bool,
    /// The image the simulated enclave measures for PCR0-2 [default: the nekms-enclave executable]
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    /// Do not push the instance role's credentials to the enclave
    #[arg(long)]
    no_credentials: bool,
    /// Write the addresses as JSON here once everything is up
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// Reuse this custody KMS key (ARN) instead of the world's (its final policy in force must be the custody policy
    /// for the development signer, or with --trust pcr0 for the image measured with the same configuration)
    #[arg(long, value_name = "ARN")]
    custody_kms_key: Option<String>,
    /// How the custody key trusts images: pcr8 = the world's custody key (DEV/custody.toml, made once), trusting every
    /// image the development image signer signs, so restarts and rebuilds keep every key; pcr0 = a new custody key
    /// for this one image and configuration (debug mode always trusts by image)
    #[arg(long, value_name = "TRUST", default_value = "pcr8", value_parser = ["pcr8", "pcr0"])]
    trust: String,
    /// Turn off decryption for the parent (kmstool's service, RPC Decrypt/GenerateDataKey) in the enclave's configuration
    /// (dev up turns it on for kmstool's flow; an enclave with custody keys has it off unless its configuration says otherwise)
    #[arg(long)]
    no_parent_decrypt: bool,
    /// Do not allow imports (allow-import) in the enclave's configuration
    #[arg(long)]
    no_import: bool,
    /// Run a validator signer: push this tmkms.toml (its keys as custody records, states initialised or
    /// imported beforehand) and proxy its [[validator]] entries
    #[arg(long, value_name = "TMKMS_TOML")]
    privval_config: Option<PathBuf>,
    /// The validator signer's limit on one height jump, in the enclave's measured configuration [default: the enclave's, 1000000]
    #[arg(long, value_name = "HEIGHTS")]
    privval_max_height_jump: Option<i64>,
    /// The validator signer's freshness anchor: this DynamoDB table (in the measured configuration)
    #[arg(long, value_name = "TABLE", requires = "privval_anchor_endpoint")]
    privval_anchor_table: Option<String>,
    /// The anchor's DynamoDB endpoint (http://127.0.0.1:PORT for moto); dev up proxies the enclave to it
    #[arg(long, value_name = "URL")]
    privval_anchor_endpoint: Option<String>,
    /// Run the enclave as an image in a guest VM over real vsock: build it (nekms image build --development, which needs
    /// nekms's `image` feature) from these blobs (bzImage, cmdline, init, nsm.ko, modules/) around the custody key, and
    /// boot it with `nekms dev vm`'s launcher (QEMU and vhost-device-vsock)
    #[arg(long, value_name = "DIR")]
    vm_blobs: Option<PathBuf>,
    /// The guest's nekms-enclave: static, with the simulator
    /// (cargo rustc -p nekms-enclave --features sim --bin nekms-enclave -- -C target-feature=+crt-static)
    #[arg(long, value_name = "FILE", env = "NEKMS_VM_ENCLAVE_BIN")]
    vm_enclave_bin: Option<PathBuf>,
    /// The guest's accelerator: kvm, tcg, or auto (KVM where the host has VMX or SVM)
    #[arg(long, value_name = "ACCEL", default_value = "auto")]
    vm_accel: String,
    /// The guest's memory
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    vm_memory: u32,
    /// The guest's vCPUs
    #[arg(long, value_name = "N", default_value_t = 2)]
    vm_cpus: u32,
    /// A migration approver's public key (PEM or DER SPKI, Ed25519 or P-256), into the measured configuration (repeatable)
    #[arg(long = "migration-approver", value_name = "FILE", requires = "migration_threshold")]
    migration_approvers: Vec<PathBuf>,
    /// How many approvers must approve a migration
    #[arg(long, value_name = "N", requires = "migration_approvers")]
    migration_threshold: Option<usize>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dev = a.dir.resolve()?;
    let options = Options {
        run_dir: a.run_dir,
        kms_http: a.kms_http,
        kms_https: a.kms_https,
        debug_mode: a.debug_mode,
        image: a.image,
        no_credentials: a.no_credentials,
        custody_kms_key: a.custody_kms_key,
        trust_by_image: a.trust == "pcr0",
        migration_approvers: a
            .migration_approvers
            .iter()
            .map(|p| Ok(base64::engine::Engine::encode(&base64::engine::general_purpose::STANDARD, super::migrate::spki(p)?)))
            .collect::<anyhow::Result<_>>()?,
        migration_threshold: a.migration_threshold,
        no_parent_decrypt: a.no_parent_decrypt,
        no_import: a.no_import,
        privval_config: a.privval_config,
        privval_max_height_jump: a.privval_max_height_jump,
        privval_anchor_table: a.privval_anchor_table,
        privval_anchor_endpoint: a.privval_anchor_endpoint,
        vm: match a.vm_blobs {
            Some(blobs) => Some(nekms_dev::up::vm::VmSpec {
                blobs,
                enclave_bin: a.vm_enclave_bin.ok_or_else(|| {
                    anyhow::anyhow!(
                        "--vm-blobs needs --vm-enclave-bin (or NEKMS_VM_ENCLAVE_BIN): a static nekms-enclave with the simulator"
                    )
                })?,
                accel: a.vm_accel,
                memory_mib: a.vm_memory,
                cpus: a.vm_cpus,
            }),
            None => None,
        },
    };
    let mut up = nekms_dev::up::start(&dev, &options)?;
    println!("nekms dev up: running; Ctrl-C stops everything");
    println!("  local KMS   {} (parent) and {} (enclave), pid {}", up.kms_http, up.kms_https, up.kms_pid);
    println!("  proxy       {} -> localhost:{}, pid {}", up.proxy, up.https_port, up.proxy_pid);
    println!(
        "  enclave     {} (image {}), pid {}",
        if up.simulated { "simulated" } else { "hardware" },
        up.image.display(),
        up.enclave_pid
    );
    if let Some(vm) = &up.vm {
        println!(
            "              in a guest VM under {} (QEMU pid {}), up in {:.1} s; console {}",
            vm.accel,
            vm.qemu_pid,
            vm.ready_after.as_secs_f64(),
            vm.serial_log.display()
        );
    }
    println!("              RPC {}", up.rpc);
    println!("              kmstool {}", up.kmstool);
    match &up.p11 {
        Ok(kit) => println!(
            "  PKCS#11     p11-kit server {} (module {}), pid {}; add tokens with nekms p11 token add",
            kit.address,
            kit.module.display(),
            kit.pid
        ),
        Err(why) => println!("  PKCS#11     not served: {why}"),
    }
    println!(
        "  validator signer {} (state store {}, pid {}, records in {})",
        up.privval,
        up.privval_state,
        up.persist_pid,
        up.privval_state_dir.display()
    );
    if let Some(pid) = up.privval_proxy_pid {
        println!("              privval proxy pid {pid}; nekms privval status shows the chains");
    }
    for (i, pcr) in up.pcrs.iter().enumerate() {
        println!("  PCR{i}        {pcr}");
    }
    println!("  custody key {}", up.custody_key);
    println!(
        "              pinned in {} (measured into PCR0); its final policy names this PCR0 and locks the administrator out",
        up.enclave_config.display()
    );
    if options.debug_mode {
        println!("  WARNING     debug mode: PCRs are all zero, so a policy naming them admits every debug-mode image");
    }
    match &up.credentials {
        Some(access_key_id) => println!("  credentials {access_key_id} (the instance role) pushed to the enclave"),
        None => println!("  credentials none (push them with: nekms enclave credentials)"),
    }
    println!("environment (also in {}):", up.env_file.display());
    print!("{}", up.env_text().lines().map(|l| format!("  {l}\n")).collect::<String>());
    println!("then try: nekms enclave describe; nekms kmstool decrypt --address {} CIPHERTEXT", up.kmstool);
    if let Some(path) = &a.ready_file {
        up.write_ready_file(path)?;
    }

    match up.supervise()? {
        Stopped::Signal(sig) => {
            println!("nekms dev up: {sig}: stopping the enclave, the proxy, the local KMS and the rest");
            drop(up);
            Ok(())
        }
        Stopped::GuestStopped(why) => {
            tracing::error!("dev up: the guest VM stopped: {why}; stopping the others");
            drop(up);
            bail!("the guest VM stopped")
        }
        Stopped::Died { name, pid, status } => {
            tracing::error!("dev up: the {name} (pid {pid}) exited with {status}; stopping the others");
            drop(up);
            bail!("the {name} died")
        }
    }
}

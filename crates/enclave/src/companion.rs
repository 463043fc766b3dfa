//! A program the enclave runs beside itself: p11-kit's server, which loads
//! the PKCS#11 module and serves it over vsock (ACM for Nitro Enclaves'
//! layout). An image's init starts one program, nekms-enclave; this starts
//! the other once the module's socket is listening, and again one second
//! after it exits. Its command line is in the measured configuration.

use std::time::Duration;

/// Run `argv` with `NEKMS_P11_RPC` set to the module's socket, for ever.
pub async fn p11_kit_server(argv: Vec<String>, module_rpc: String) {
    let Some((program, args)) = argv.split_first() else { return };
    loop {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).env("NEKMS_P11_RPC", &module_rpc).kill_on_drop(true);
        match cmd.spawn() {
            Ok(mut child) => {
                tracing::info!("p11-kit's server started: {}", argv.join(" "));
                match child.wait().await {
                    Ok(status) => tracing::warn!("p11-kit's server exited with {status}; starting it again in 1 s"),
                    Err(e) => tracing::warn!("p11-kit's server: {e}; starting it again in 1 s"),
                }
            }
            Err(e) => tracing::warn!("starting {program}: {e}; trying again in 1 s"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

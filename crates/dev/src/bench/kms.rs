//! `nekms bench kms`: throughput of the local KMS against moto's KMS,
//! measured in the same run, with the same signed requests and clients.

use std::net::SocketAddr;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use nekms_kms::sigv4::Credential;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use crate::kms::{Conn, InProcessKms, Target};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Seconds to run each operation at each concurrency.
    pub seconds: f64,
    /// Concurrent clients to measure with.
    pub clients: Vec<usize>,
    /// Measure only the local KMS (no moto).
    pub no_moto: bool,
}

struct Cell {
    per_second: f64,
    p50: Duration,
}

async fn measure(target: &Target, op: &str, body: &Value, clients: usize, seconds: f64) -> anyhow::Result<Cell> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..clients {
        let mut conn = Conn::open(target).await?;
        let (op, body) = (op.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                conn.call(&op, &body).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let p50 = all.get(all.len() / 2).copied().unwrap_or_default();
    Ok(Cell { per_second: all.len() as f64 / elapsed, p50 })
}

/// The four workloads, with bodies for a target whose key is `key_id`.
fn workloads(conn_key: &str, blob: &str, recipient: &Value) -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("Encrypt", "Encrypt", json!({"KeyId": conn_key, "Plaintext": base64::engine::general_purpose::STANDARD.encode([7u8; 64])})),
        ("Decrypt", "Decrypt", json!({"CiphertextBlob": blob})),
        ("GenerateDataKey", "GenerateDataKey", json!({"KeyId": conn_key, "KeySpec": "AES_256"})),
        ("Decrypt + Recipient", "Decrypt", json!({"CiphertextBlob": blob, "Recipient": recipient})),
    ]
}

async fn prepare(target: &Target) -> anyhow::Result<(String, String)> {
    let mut c = Conn::open(target).await?;
    let key = c.call("CreateKey", &json!({"Description": "nekms bench"})).await?;
    let key_id = key["KeyMetadata"]["Arn"].as_str().ok_or_else(|| anyhow!("{}: CreateKey gave no Arn", target.name))?.to_owned();
    let ct = c.call("Encrypt", &json!({"KeyId": key_id, "Plaintext": base64::engine::general_purpose::STANDARD.encode([9u8; 32])})).await?;
    let blob = ct["CiphertextBlob"].as_str().ok_or_else(|| anyhow!("{}: Encrypt gave no blob", target.name))?.to_owned();
    Ok((key_id, blob))
}

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_moto() -> anyhow::Result<(Moto, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Process::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting moto (python3 -m moto.server)")?;
    let moto = Moto(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let start = Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("moto did not start on {addr}; is it installed? (python3 -m pip install 'moto[server]')");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((moto, addr))
}

/// Measure, printing a table row per operation and concurrency.
pub async fn run(args: &Options) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("nekms-bench-{}", std::process::id()));
    let result = bench_in(&tmp, args).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn bench_in(tmp: &std::path::Path, args: &Options) -> anyhow::Result<()> {
    let dev = nekms_devworld::DevDir::new(tmp.join("dev"));
    dev.init()?;
    let local = InProcessKms::start(&dev, &tmp.join("kms"), false).await?;
    let ours = local.target(&dev, "admin")?;
    // A simulated enclave's document, with a fresh RSA-2048 recipient key.
    let recipient_key = nekms_cms::RecipientKey::generate()?;
    let nsm = nekms_nsm::SimulatedNsm::boot(
        nekms_nsm::SimConfig::new(nekms_nsm::measure::Measurement::of_image(b"nekms bench image", None)),
        dev.document_signer()?,
    );
    use nekms_nsm::Nsm;
    let doc = nsm.attestation(nekms_nsm::AttestationRequest { public_key: Some(recipient_key.public_key_der()?), ..Default::default() })?;
    let recipient = json!({"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": base64::engine::general_purpose::STANDARD.encode(&doc)});

    let moto = if args.no_moto { None } else { Some(start_moto().await?) };
    let theirs = moto.as_ref().map(|(_, addr)| Target {
        name: "moto",
        addr: *addr,
        credential: Credential {
            access_key_id: "AKIAMOTOBENCH0000000".into(),
            secret_access_key: Zeroizing::new("moto accepts any secret".into()),
            session_token: None,
            expires: None,
            principal_arn: String::new(),
        },
        via: None,
    });

    let (our_key, our_blob) = prepare(&ours).await?;
    let their = match &theirs {
        Some(t) => Some(prepare(t).await?),
        None => None,
    };
    // Check once that the Recipient path really seals for the enclave.
    let sealed = Conn::open(&ours).await?.call("Decrypt", &json!({"CiphertextBlob": our_blob, "Recipient": recipient})).await?;
    let opened =
        recipient_key.open(&base64::engine::general_purpose::STANDARD.decode(sealed["CiphertextForRecipient"].as_str().unwrap_or(""))?)?;
    anyhow::ensure!(opened.as_slice() == [9u8; 32], "Recipient decrypt returned the wrong plaintext");

    println!(
        "nekms bench kms: {} s per cell, loopback HTTP/1.1 keep-alive, SigV4-signed, {} cores",
        args.seconds,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    if theirs.is_some() {
        println!("reference: moto's KMS (python3 -m moto.server) in the same run; moto ignores Recipient and returns Plaintext.");
    }
    println!("{:<22} {:>7} {:>14} {:>11} {:>12} {:>9}", "operation", "clients", "nekms req/s", "nekms p50", "moto req/s", "ratio");
    for clients in &args.clients {
        for (label, op, body) in workloads(&our_key, &our_blob, &recipient) {
            let cell = measure(&ours, op, &body, *clients, args.seconds).await?;
            let reference = match (&theirs, &their) {
                (Some(t), Some((key, blob))) => {
                    let (_, _, body) = workloads(key, blob, &recipient).into_iter().find(|w| w.0 == label).expect("same workloads");
                    Some(measure(t, op, &body, *clients, args.seconds).await?)
                }
                _ => None,
            };
            let (moto_rps, ratio) = match reference {
                Some(r) => (format!("{:.0}", r.per_second), format!("{:.1}x", cell.per_second / r.per_second)),
                None => ("-".into(), "-".into()),
            };
            println!(
                "{:<22} {:>7} {:>14.0} {:>9.2}ms {:>12} {:>9}",
                label,
                clients,
                cell.per_second,
                cell.p50.as_secs_f64() * 1000.0,
                moto_rps,
                ratio
            );
        }
    }
    drop(moto);
    Ok(())
}

//! `nekms bench kmstool`: kmstool Decrypt round trips through
//! enclave -> proxy -> local KMS, and the proxy against a direct connection
//! to the same KMS, all measured in one run in this process.

use std::sync::Arc;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_kms_client::{ChannelHttpClient, EnclaveKms, TlsRoots};
use nekms_nsm::measure::Measurement;
use nekms_nsm::{Nsm, SimConfig, SimulatedNsm};
use nekms_transport::Address;
use serde_json::json;
use zeroize::Zeroizing;

use super::measure::{measure, Cell};
use crate::custody::enclave_only_secret;
use crate::kms::{Conn, InProcessKms, Target};
use crate::kmstool_client::KmstoolClient;
use crate::world::{proxy_to, EnclavePath};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Seconds per cell.
    pub seconds: f64,
    /// Concurrent kmstool clients to measure with.
    pub clients: Vec<usize>,
}

/// One client's loop body.
trait Worker: Send + 'static {
    fn call(&mut self) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

struct Kmstool {
    client: KmstoolClient,
    ciphertext: String,
}

impl Worker for Kmstool {
    async fn call(&mut self) -> anyhow::Result<()> {
        let plaintext = self.client.decrypt(&self.ciphertext, &Default::default()).await?;
        anyhow::ensure!(&plaintext[..] == b"Hello, KMS!", "wrong plaintext");
        Ok(())
    }
}

/// The enclave's own KMS client (Decrypt with a Recipient), over a given channel.
struct Sealed {
    kms: Arc<EnclaveKms>,
    blob: Vec<u8>,
}

impl Worker for Sealed {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.kms.decrypt(&self.blob, &Default::default(), None).await?;
        Ok(())
    }
}

/// A plain SigV4 KMS request over keep-alive HTTP.
struct Plain {
    conn: Conn,
    body: serde_json::Value,
}

impl Worker for Plain {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.conn.call("Encrypt", &self.body).await?;
        Ok(())
    }
}

/// Run every worker in its own loop for `seconds`; every call must succeed.
async fn measure_workers<W: Worker>(workers: Vec<W>, seconds: f64) -> anyhow::Result<Cell> {
    let workers: Vec<_> = workers.into_iter().map(|w| Arc::new(tokio::sync::Mutex::new(w))).collect();
    measure(workers.len(), seconds, |i| {
        let w = workers[i].clone();
        move || {
            let w = w.clone();
            async move { w.lock().await.call().await }
        }
    })
    .await
}

fn row(label: &str, clients: usize, cell: &Cell, reference: Option<&Cell>) {
    let ratio = reference.map(|r| format!("{:.2}", cell.per_second / r.per_second)).unwrap_or_else(|| "-".into());
    println!("{label:<48} {clients:>7} {:>10.0} {:>9.2}ms {ratio:>7}", cell.per_second, cell.p50.as_secs_f64() * 1000.0);
}

/// Measure, printing a table row per path and concurrency.
pub async fn run(a: &Options) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = nekms_devworld::DevDir::new(tmp.path().join("dev"));
    dev.init()?;
    let local = InProcessKms::start(&dev, &tmp.path().join("kms"), false).await?;
    let https = local.https_addr.port();
    let plain_proxy: Address = format!("unix://{}", tmp.path().join("plain-proxy.sock").display()).parse()?;
    let _plain = proxy_to(plain_proxy.clone(), local.addr.port()).await?;

    // The enclave, in this process, reaching KMS through the proxy; a key only its image may decrypt with.
    let measurement = Measurement::of_image(b"nekms bench enclave", None);
    let nsm: Arc<dyn Nsm> = Arc::new(SimulatedNsm::boot(SimConfig::new(measurement.clone()), dev.document_signer()?));
    let path = EnclavePath::start(&dev, &local, nsm.clone(), tmp.path()).await?;
    let (arn, ciphertext) = enclave_only_secret(&dev, &local, &measurement.pcr0.to_hex(), "nekms bench", b"Hello, KMS!").await?;
    let blob = B64.decode(&ciphertext)?;
    let instance_target = local.target(&dev, "instance")?;
    let p = dev.principals()?.into_iter().find(|p| p.name == "instance").context("no instance principal")?;
    let credentials = || nekms_kms_client::Credentials {
        access_key_id: p.access_key_id.clone(),
        secret_access_key: Zeroizing::new(p.secret_access_key.clone()),
        session_token: p.session_token.clone().map(Zeroizing::new),
        region: "us-east-1".into(),
        expiration: None,
    };
    let ca = std::fs::read_to_string(dev.tls_ca_path())?;
    let sealed_client = |channel: Address| -> anyhow::Result<Arc<EnclaveKms>> {
        let http = ChannelHttpClient::new(channel, TlsRoots::Pem(ca.clone())).map_err(anyhow::Error::msg)?;
        let kms = EnclaveKms::new(nsm.clone(), http, Some(path.endpoint.clone()))?;
        kms.set_credentials(credentials());
        Ok(Arc::new(kms))
    };
    let through_proxy = sealed_client(path.proxy.clone())?;
    let direct = sealed_client(format!("tcp://127.0.0.1:{https}").parse()?)?;

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("nekms bench kmstool: {} s per cell, {cores} cores, everything in this process over Unix sockets and loopback TCP", a.seconds);
    println!("every Decrypt carries a fresh attestation document; KMS answers with CiphertextForRecipient, opened in the enclave.");
    println!("{:<48} {:>7} {:>10} {:>11} {:>7}", "path", "clients", "req/s", "p50", "ratio");
    for &clients in &a.clients {
        let reference =
            measure_workers((0..clients).map(|_| Sealed { kms: direct.clone(), blob: blob.clone() }).collect(), a.seconds).await?;
        let proxied =
            measure_workers((0..clients).map(|_| Sealed { kms: through_proxy.clone(), blob: blob.clone() }).collect(), a.seconds).await?;
        let mut workers = Vec::new();
        for _ in 0..clients {
            let mut client = KmstoolClient::connect(&path.kmstool).await?;
            client.set_client(&p.access_key_id, &p.secret_access_key, p.session_token.as_deref(), Some("us-east-1")).await?;
            workers.push(Kmstool { client, ciphertext: ciphertext.clone() });
        }
        let kmstool = measure_workers(workers, a.seconds).await?;
        row("enclave KMS client -> KMS HTTPS directly (ref)", clients, &reference, None);
        row("enclave KMS client -> proxy -> KMS HTTPS", clients, &proxied, Some(&reference));
        row("kmstool Decrypt -> enclave -> proxy -> KMS", clients, &kmstool, Some(&reference));
    }
    println!();
    println!("the proxy alone, with light requests (Encrypt, SigV4 over keep-alive HTTP/1.1, no TLS):");
    println!("{:<48} {:>7} {:>10} {:>11} {:>7}", "path", "clients", "req/s", "p50", "ratio");
    let body = json!({"KeyId": arn, "Plaintext": B64.encode("Hello, KMS!")});
    for &clients in &a.clients {
        let mut direct_workers = Vec::new();
        let mut proxied_workers = Vec::new();
        for _ in 0..clients {
            direct_workers.push(Plain { conn: Conn::open(&instance_target).await?, body: body.clone() });
            let via = Target { via: Some(plain_proxy.clone()), ..instance_target.clone() };
            proxied_workers.push(Plain { conn: Conn::open(&via).await?, body: body.clone() });
        }
        let reference = measure_workers(direct_workers, a.seconds).await?;
        let proxied = measure_workers(proxied_workers, a.seconds).await?;
        row("client -> KMS TCP directly (ref)", clients, &reference, None);
        row("client -> proxy -> KMS TCP", clients, &proxied, Some(&reference));
    }
    Ok(())
}

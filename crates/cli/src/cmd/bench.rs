//! `nekms bench kms`: throughput of the local KMS against moto's KMS,
//! measured in the same run, with the same signed requests and clients.

use std::net::SocketAddr;
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use nekms_kms::sigv4::{self, Credential};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Requests per second of the local KMS vs moto's KMS (Encrypt, Decrypt, GenerateDataKey, Decrypt with Recipient)
    Kms(KmsArgs),
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

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Kms(a) => tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bench_kms(a)),
    }
}

/// One target: where it is and how to sign for it.
#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    credential: Credential,
}

/// A keep-alive HTTP/1.1 connection that sends signed KMS requests.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    target: Target,
}

impl Conn {
    async fn open(target: &Target) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn { sender, target: target.clone() })
    }

    async fn call(&mut self, op: &str, body: &Value) -> anyhow::Result<Value> {
        let body = serde_json::to_vec(body)?;
        let mut headers = vec![
            ("host".to_owned(), self.target.addr.to_string()),
            ("content-type".to_owned(), "application/x-amz-json-1.1".to_owned()),
            ("x-amz-target".to_owned(), format!("TrentService.{op}")),
        ];
        sigv4::sign("POST", "/", "", &mut headers, &body, &self.target.credential, "us-east-1", "kms", time::OffsetDateTime::now_utc());
        let mut req = hyper::Request::post("/");
        for (n, v) in &headers {
            req = req.header(n, v);
        }
        // Servers that close after each response (moto's HTTP/1.0 server) get a new connection.
        if self.sender.ready().await.is_err() {
            *self = Conn::open(&self.target).await?;
            self.sender.ready().await?;
        }
        let resp = self.sender.send_request(req.body(Full::new(Bytes::from(body)))?).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{} {op}: HTTP {status}: {v}", self.target.name);
        }
        Ok(v)
    }
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

async fn bench_kms(args: KmsArgs) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("nekms-bench-{}", std::process::id()));
    let result = bench_in(&tmp, &args).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn bench_in(tmp: &std::path::Path, args: &KmsArgs) -> anyhow::Result<()> {
    let dev = nekms_devworld::DevDir::new(tmp.join("dev"));
    dev.init()?;
    let config = nekms_kms::run::config_from_dev(&dev, false, Duration::from_secs(300)).map_err(anyhow::Error::msg)?;
    let kms = nekms_kms::service::Kms::open(&tmp.join("kms"), config)?;
    let server = Arc::new(nekms_kms::server::Server::new(kms, None));
    let bound = nekms_kms::server::bind(&[nekms_kms::server::Listen::Http("127.0.0.1:0".parse()?)], None).await.map_err(anyhow::Error::msg)?;
    let url = bound[0].url();
    let addr: SocketAddr = url.trim_start_matches("http://").parse()?;
    let serving = tokio::spawn(nekms_kms::server::serve(server, bound.into_iter().next().expect("one listener")));

    let admin = dev.principals()?.into_iter().find(|p| p.name == "admin").ok_or_else(|| anyhow!("no admin principal"))?;
    let ours = Target {
        name: "nekms-kms",
        addr,
        credential: Credential {
            access_key_id: admin.access_key_id.clone(),
            secret_access_key: Zeroizing::new(admin.secret_access_key.clone()),
            session_token: None,
            expires: None,
            principal_arn: admin.arn.clone(),
        },
    };
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
    });

    let (our_key, our_blob) = prepare(&ours).await?;
    let their = match &theirs {
        Some(t) => Some(prepare(t).await?),
        None => None,
    };
    // Check once that the Recipient path really seals for the enclave.
    let sealed = Conn::open(&ours).await?.call("Decrypt", &json!({"CiphertextBlob": our_blob, "Recipient": recipient})).await?;
    let opened = recipient_key.open(&base64::engine::general_purpose::STANDARD.decode(sealed["CiphertextForRecipient"].as_str().unwrap_or(""))?)?;
    anyhow::ensure!(opened.as_slice() == [9u8; 32], "Recipient decrypt returned the wrong plaintext");

    println!("nekms bench kms: {} s per cell, loopback HTTP/1.1 keep-alive, SigV4-signed, {} cores", args.seconds, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
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
    serving.abort();
    drop(moto);
    Ok(())
}

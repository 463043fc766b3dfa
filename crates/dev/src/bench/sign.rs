//! `nekms bench sign`: signatures per second with a key of each spec,
//! (a) in this process with the key in hand (the reference: one signing
//! loop per client), (b) through the enclave's RPC on a Unix socket, each
//! client one connection with `--depth` calls pipelined on it, the opened
//! key cached in the enclave, and (c) through the agent's HTTP API, each
//! client `--depth` keep-alive connections (HTTP/1.1 cannot pipeline); and
//! the latency of a cold signature (KMS Decrypt with a Recipient, open the
//! sealed key, sign) against the local KMS, one call at a time.
//! Everything runs in this process and shares its cores.

use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use nekms_keys::{KeyRecord, KeySpec, Payload, PrivateKey, Scheme};
use nekms_rpc::{Client, GenerateKey};
use nekms_store::{KeyStore, SqliteStore, Store};

use super::measure::{measure, Cell};
use crate::world::{BenchWorld, EnclavePath};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Key specs to measure.
    pub spec: Vec<KeySpec>,
    /// Concurrent clients.
    pub clients: Vec<usize>,
    /// Calls each client keeps outstanding in (b) and (c).
    pub depth: usize,
    /// Seconds per cell.
    pub seconds: f64,
    /// Cold signatures to time per spec.
    pub cold: usize,
}

/// A keep-alive HTTP/1.1 connection to the agent.
struct Http {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    authorization: String,
}

impl Http {
    async fn open(addr: std::net::SocketAddr, token: &str) -> anyhow::Result<Http> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Http { sender, host: addr.to_string(), authorization: format!("Bearer {token}") })
    }

    async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<()> {
        self.sender.ready().await?;
        let req = hyper::Request::post(path)
            .header("host", &self.host)
            .header("authorization", &self.authorization)
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status == 200, "agent answered {status}: {}", String::from_utf8_lossy(&bytes));
        Ok(())
    }
}

/// `loops` loops signing `message` with `key` in this process: the reference.
pub(super) async fn in_process(key: &Arc<PrivateKey>, scheme: Scheme, message: &[u8], loops: usize, seconds: f64) -> anyhow::Result<Cell> {
    measure(loops, seconds, |_| {
        let (key, payload) = (key.clone(), Payload::Message(message.to_vec()));
        move || {
            let (key, payload) = (key.clone(), payload.clone());
            async move {
                key.sign(scheme, &payload)?;
                anyhow::Ok(())
            }
        }
    })
    .await
}

/// `loops` keep-alive connections posting `body` to the agent's `path`.
pub(super) async fn through_agent(
    addr: std::net::SocketAddr,
    token: &str,
    path: &str,
    body: Bytes,
    loops: usize,
    seconds: f64,
) -> anyhow::Result<Cell> {
    let mut conns = Vec::new();
    for _ in 0..loops {
        conns.push(Arc::new(tokio::sync::Mutex::new(Http::open(addr, token).await?)));
    }
    measure(loops, seconds, |i| {
        let (conn, body, path) = (conns[i].clone(), body.clone(), path.to_owned());
        move || {
            let (conn, body, path) = (conn.clone(), body.clone(), path.clone());
            async move { conn.lock().await.post(&path, body).await }
        }
    })
    .await
}

fn row(label: &str, clients: usize, cell: &Cell, reference: Option<&Cell>) {
    let ratio = reference.map(|r| format!("{:.2}", cell.per_second / r.per_second)).unwrap_or_else(|| "-".into());
    println!("  {label:<40} {clients:>7} {:>10.0} {:>9.3}ms {ratio:>7}", cell.per_second, cell.p50.as_secs_f64() * 1000.0);
}

/// Measure, printing a table per key spec.
pub async fn run(a: &Options) -> anyhow::Result<()> {
    let world = BenchWorld::new("nekms bench sign").await?;
    let (tmp, dev, local, config, nsm) = (&world.tmp, &world.dev, &world.local, &world.config, world.nsm.clone());
    let warm = EnclavePath::start_with(dev, local, nsm.clone(), &tmp.path().join("warm"), None, config).await?;
    let cold = EnclavePath::start_with(dev, local, nsm.clone(), &tmp.path().join("cold"), Some(0), config).await?;
    warm.supply_instance_credentials(dev)?;
    cold.supply_instance_credentials(dev)?;
    let agent_store = SqliteStore::open(&tmp.path().join("agent.db"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let agent_addr = listener.local_addr()?;
    let token_file = tmp.path().join("agent.token");
    let access = nekms_agent::Access::single_token(&token_file)?;
    let token = std::fs::read_to_string(&token_file)?.trim().to_owned();
    let _agent = nekms_agent::spawn(listener, warm.rpc.clone(), Store::Sqlite(agent_store.clone()), access);
    let rpc = Client::connect(&warm.rpc, "nekms bench").await?;
    let mut connections = Vec::new();
    for _ in 0..a.clients.iter().copied().max().unwrap_or(1) {
        connections.push(Client::connect(&warm.rpc, "nekms bench").await?);
    }
    let cold_rpc = Client::connect(&cold.rpc, "nekms bench").await?;

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "nekms bench sign: {} s per cell, {cores} cores, {} calls outstanding per client in (b) and (c); the reference, the enclave and the agent share this process",
        a.seconds, a.depth
    );
    println!("  {:<40} {:>7} {:>10} {:>11} {:>7}", "path", "clients", "sig/s", "p50", "ratio");
    for spec in &a.spec {
        let spec = *spec;
        let name = format!("bench-{spec}");
        let record = rpc.generate_key(GenerateKey::new(name.clone(), spec)).await?;
        agent_store.create(&record).await?;
        let record: Arc<KeyRecord> = Arc::new(record);
        let message = b"nekms bench: a 32-byte message..".to_vec();
        let local_key = Arc::new(PrivateKey::generate(spec, &[7u8; 64])?);
        let scheme = Scheme::default_for(spec);
        println!("{spec} ({scheme}):");
        for &clients in &a.clients {
            let reference = in_process(&local_key, scheme, &message, clients, a.seconds).await?;
            let depth = a.depth.max(1);
            let channel = measure(clients * depth, a.seconds, |i| {
                let (rpc, record, payload) = (connections[i / depth].clone(), record.clone(), Payload::Message(message.clone()));
                move || {
                    let (rpc, record, payload) = (rpc.clone(), record.clone(), payload.clone());
                    async move {
                        rpc.sign((*record).clone(), Some(scheme), payload).await?;
                        anyhow::Ok(())
                    }
                }
            })
            .await?;
            let body = Bytes::from(serde_json::to_vec(&serde_json::json!({"message_hex": hex::encode(&message)}))?);
            let path = format!("/v1/keys/{name}/sign");
            let http = through_agent(agent_addr, &token, &path, body, clients * depth, a.seconds).await?;
            row("(a) in process, key in hand (ref)", clients, &reference, None);
            row("(b) enclave RPC, Unix socket, pipelined", clients, &channel, Some(&reference));
            row("(c) agent HTTP -> enclave RPC", clients, &http, Some(&reference));
        }
        // Cold: the enclave keeps no opened key, so each signature decrypts the data key with KMS.
        let mut latencies = Vec::with_capacity(a.cold);
        for _ in 0..a.cold {
            let t = Instant::now();
            cold_rpc.sign((*record).clone(), Some(scheme), Payload::Message(message.clone())).await?;
            latencies.push(t.elapsed());
        }
        latencies.sort();
        let pct = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
        println!("  cold (KMS Decrypt with Recipient, open, sign): p50 {:.2} ms, p90 {:.2} ms over {}", pct(0.5), pct(0.9), a.cold);
    }
    Ok(())
}

//! `nekms bench privval`: closed-loop prevote/precommit latency and
//! signatures per second, side by side in one run: tmkms 0.15.0 (softsign,
//! its state file written without fsync) against nekms (the parent's relay
//! into the enclave, the new state committed to the state store before each
//! reply, with and without fsync), over Unix sockets and over TCP with
//! SecretConnection, and two chains at once. The enclaves run in this
//! process over Unix sockets (as the tests' dev up does in processes); the
//! validator is this process too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cometbft_p2p::{AsyncReadMsg, AsyncSecretConnection, AsyncWriteMsg};
use nekms_privval::prost::Message as _;
use nekms_privval::proto::privval::{message::Sum, Message as Envelope, SignVoteRequest};
use nekms_privval::proto::types::{BlockId, PartSetHeader, Vote};
use nekms_rpc::{Client, Entropy, GenerateKey, PrivvalChain, PrivvalRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kms::Conn;
use crate::world::{proxy_to, BenchWorld, EnclavePath};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Seconds per row.
    pub seconds: f64,
    /// tmkms 0.15.0 built with softsign [default: $NEKMS_TMKMS_BIN, else
    /// ~/.cache/nekms/peers/tmkms-0.15.0/bin/tmkms]; its row is left out when there is none.
    pub tmkms: Option<PathBuf>,
}

/// One validator connection, as the validator reads and writes it.
enum Link {
    Plain(tokio::net::UnixStream, Vec<u8>),
    Tcp(Box<AsyncSecretConnection<tokio::net::TcpStream>>),
}

impl Link {
    async fn ask(&mut self, body: Vec<u8>) -> anyhow::Result<Envelope> {
        match self {
            Link::Plain(s, buf) => {
                s.write_all(&nekms_privval::frame::encode(&body, nekms_privval::frame::MAX_REQUEST)?).await?;
                loop {
                    if let Some((used, reply)) = nekms_privval::frame::decode(buf, nekms_privval::frame::MAX_REPLY)? {
                        let e = Envelope::decode(reply)?;
                        buf.drain(..used);
                        return Ok(e);
                    }
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).await?;
                    if n == 0 {
                        bail!("the signer closed the connection");
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            Link::Tcp(sc) => {
                sc.write_msg(Envelope::decode(body.as_slice())?).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                sc.read_msg::<Envelope>().await.map_err(|e| anyhow::anyhow!("{e}"))
            }
        }
    }
}

/// Where a signer dials in: a Unix socket, or TCP with SecretConnection.
enum Laddr {
    Unix(tokio::net::UnixListener, PathBuf),
    Tcp(tokio::net::TcpListener, cometbft_p2p::IdentitySecret),
}

impl Laddr {
    async fn new(tcp: bool, dir: &std::path::Path, name: &str) -> anyhow::Result<Laddr> {
        if tcp {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
            let seed: [u8; 32] = digest.as_ref().try_into()?;
            Ok(Laddr::Tcp(tokio::net::TcpListener::bind("127.0.0.1:0").await?, cometbft_p2p::IdentitySecret::from_bytes(&seed)))
        } else {
            let path = dir.join(format!("{name}.sock"));
            Ok(Laddr::Unix(tokio::net::UnixListener::bind(&path)?, path))
        }
    }

    fn addr(&self) -> anyhow::Result<String> {
        Ok(match self {
            Laddr::Unix(_, p) => format!("unix://{}", p.display()),
            Laddr::Tcp(l, id) => {
                let public = cometbft_p2p::PublicKey::from(id.verifying_key());
                format!("tcp://{}@{}", public.peer_id(), l.local_addr()?)
            }
        })
    }

    async fn accept(&self) -> anyhow::Result<Link> {
        let accept = async {
            Ok::<Link, anyhow::Error>(match self {
                Laddr::Unix(l, _) => Link::Plain(l.accept().await?.0, Vec::new()),
                Laddr::Tcp(l, id) => {
                    let (s, _) = l.accept().await?;
                    Link::Tcp(Box::new(AsyncSecretConnection::new(s, id).await.map_err(|e| anyhow::anyhow!("{e}"))?))
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(60), accept).await.context("the signer did not connect")?
    }
}

fn block(h: i64) -> Option<BlockId> {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&h.to_be_bytes());
    Some(BlockId { hash: hash.to_vec(), part_set_header: Some(PartSetHeader { total: 1, hash: hash.to_vec() }) })
}

/// Prevote then precommit at each height, for `seconds`: every latency.
async fn closed_loop(link: &mut Link, chain: &str, seconds: f64) -> anyhow::Result<Vec<Duration>> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut latencies = Vec::new();
    let mut h = 1i64;
    while Instant::now() < deadline {
        for t in [1, 2] {
            let vote = Vote {
                r#type: t,
                height: h,
                round: 0,
                block_id: block(h),
                timestamp: Some(nekms_privval::Timestamp { seconds: 1_800_000_000 + h, nanos: 0 }),
                validator_address: vec![0x11; 20],
                ..Default::default()
            };
            let body =
                Envelope { sum: Some(Sum::SignVoteRequest(SignVoteRequest { vote: Some(vote), chain_id: chain.into() })) }.encode_to_vec();
            let start = Instant::now();
            match link.ask(body).await?.sum {
                Some(Sum::SignedVoteResponse(r)) if r.error.is_none() && r.vote.as_ref().is_some_and(|v| v.signature.len() == 64) => {}
                other => bail!("chain {chain}: height {h}: not a signature: {other:?}"),
            }
            latencies.push(start.elapsed());
        }
        h += 1;
    }
    Ok(latencies)
}

struct Row {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

fn summarise(mut l: Vec<Duration>, seconds: f64) -> Row {
    l.sort();
    let at = |q: f64| l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default();
    Row { p50: at(0.5), p99: at(0.99), per_second: l.len() as f64 / seconds }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn print(label: &str, row: &Row, reference: Option<&Row>) {
    let ratio = reference.map(|r| format!("{:.2}x", row.p50.as_secs_f64() / r.p50.as_secs_f64())).unwrap_or_else(|| "-".into());
    println!("  {label:<52} {:>11} {:>11} {:>9.0} {:>9}", ms(row.p50), ms(row.p99), row.per_second, ratio);
}

fn tmkms_path(a: &Options) -> Option<PathBuf> {
    a.tmkms
        .clone()
        .or_else(|| std::env::var_os("NEKMS_TMKMS_BIN").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/nekms/peers/tmkms-0.15.0/bin/tmkms")))
        .filter(|p| p.exists())
}

/// Run tmkms for one validator address; the child is killed on drop.
struct Tmkms(std::process::Child);

impl Drop for Tmkms {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_tmkms(bin: &std::path::Path, dir: &std::path::Path, name: &str, chain: &str, addr: &str) -> anyhow::Result<Tmkms> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d)?;
    use base64::Engine;
    std::fs::write(d.join("consensus.key"), base64::engine::general_purpose::STANDARD.encode([0x42u8; 32]))?;
    std::fs::write(d.join("identity.key"), base64::engine::general_purpose::STANDARD.encode([0x43u8; 32]))?;
    let secret =
        if addr.starts_with("tcp://") { format!("secret_key = \"{}\"\n", d.join("identity.key").display()) } else { String::new() };
    std::fs::write(
        d.join("tmkms.toml"),
        format!(
            "[[chain]]\nid = \"{chain}\"\nkey_format = {{ type = \"hex\" }}\nstate_file = \"{}\"\n\n[[providers.softsign]]\nchain_ids = [\"{chain}\"]\nkey_type = \"consensus\"\npath = \"{}\"\n\n[[validator]]\nchain_id = \"{chain}\"\naddr = \"{addr}\"\nprotocol_version = \"v0.38\"\nreconnect = true\n{secret}",
            d.join("state.json").display(),
            d.join("consensus.key").display()
        ),
    )?;
    let child = std::process::Command::new(bin)
        .args(["start", "-c"])
        .arg(d.join("tmkms.toml"))
        .stdout(std::fs::File::create(d.join("tmkms.log"))?)
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| bin.display().to_string())?;
    Ok(Tmkms(child))
}

/// Measure, printing a row per signer and transport.
pub async fn run(a: &Options) -> anyhow::Result<()> {
    let world = BenchWorld::new("nekms bench privval").await?;
    let (tmp, dev, local, config, nsm) = (&world.tmp, &world.dev, &world.local, &world.config, &world.nsm);
    let durable = EnclavePath::start_full(dev, local, nsm.clone(), &tmp.path().join("durable"), None, config, true).await?;
    let fast = EnclavePath::start_full(dev, local, nsm.clone(), &tmp.path().join("nofsync"), None, config, false).await?;
    durable.supply_instance_credentials(dev)?;
    fast.supply_instance_credentials(dev)?;
    let durable_rpc = Client::connect(&durable.rpc, "nekms bench").await?;
    let fast_rpc = Client::connect(&fast.rpc, "nekms bench").await?;
    let generate = |name: &str, privval: bool| GenerateKey {
        key_id: name.into(),
        spec: nekms_keys::KeySpec::Ed25519,
        kms_key_id: None,
        entropy: Entropy::Nsm,
        encryption_context: Default::default(),
        nonce: None,
        decrypt: false,
        privval,
        decrypt_only: false,
    };
    let key = durable_rpc.generate_key(generate("bench-consensus", true)).await?;
    let identity = durable_rpc.generate_key(generate("bench-identity", false)).await?;

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "nekms bench privval: {} s per row, {cores} cores; prevote then precommit at each height, one request outstanding per validator",
        a.seconds
    );
    println!("  {:<52} {:>11} {:>11} {:>9} {:>9}", "signer (transport)", "p50", "p99", "sig/s", "p50/tmkms");
    let tmkms = tmkms_path(a);
    if tmkms.is_none() {
        println!("  (tmkms 0.15.0 not found: ./scripts/test builds it; give --tmkms FILE)");
    }

    // One row: a signer dials `laddr`, the loop runs.
    let mut n = 0;
    let mut nekms_row = |rpc: &Client, enclave: &EnclavePath, tcp: bool, chain: String| {
        n += 1;
        let (rpc, privval, key, identity, dir) =
            (rpc.clone(), enclave.privval.clone(), key.clone(), identity.clone(), tmp.path().to_path_buf());
        let name = format!("nekms-{n}");
        async move {
            rpc.privval(PrivvalRequest::InitState { key: Box::new(key.clone()), chain_id: chain.clone(), height: Some(1), import: None })
                .await?;
            rpc.privval(PrivvalRequest::Configure(Box::new(PrivvalChain {
                chain_id: chain.clone(),
                key,
                protocol_version: "v0.38".into(),
                max_height: None,
                max_height_jump: None,
                identity: Some(identity),
            })))
            .await?;
            let laddr = Laddr::new(tcp, &dir, &name).await?;
            let v = nekms_privval_parent::config::ValidatorConfig::for_relay(&chain, &laddr.addr()?);
            let relay = tokio::spawn(async move { nekms_privval_parent::proxy::relay_once(&privval, &v).await });
            let link = laddr.accept().await?;
            anyhow::Ok((link, relay, laddr))
        }
    };

    for tcp in [false, true] {
        let transport = if tcp { "TCP + SecretConnection" } else { "Unix" };
        let reference = match &tmkms {
            Some(bin) => {
                let chain = format!("tmkms-{}", if tcp { "tcp" } else { "unix" });
                let laddr = Laddr::new(tcp, tmp.path(), &chain).await?;
                let _child = start_tmkms(bin, tmp.path(), &chain, &chain, &laddr.addr()?)?;
                let mut link = laddr.accept().await?;
                let row = summarise(closed_loop(&mut link, &chain, a.seconds).await?, a.seconds);
                print(&format!("tmkms 0.15.0, state file without fsync ({transport})"), &row, None);
                Some(row)
            }
            None => None,
        };
        for (label, rpc, enclave) in
            [("nekms, state committed with fdatasync", &durable_rpc, &durable), ("nekms, state committed without fsync", &fast_rpc, &fast)]
        {
            let chain =
                format!("{}-{}", if enclave.privval == durable.privval { "durable" } else { "nofsync" }, if tcp { "tcp" } else { "unix" });
            let (mut link, relay, _laddr) = nekms_row(rpc, enclave, tcp, chain.clone()).await?;
            let row = summarise(closed_loop(&mut link, &chain, a.seconds).await?, a.seconds);
            print(&format!("{label} ({transport})"), &row, reference.as_ref());
            drop(link);
            relay.abort();
        }
    }

    // The anchor on moto's DynamoDB (reported, not budgeted), when moto is installed.
    match Moto::start(tmp.path()).await {
        Ok(moto) => {
            let table = "nekms-bench-anchor";
            let anchor_proxy = tmp.path().join("anchor-proxy.sock");
            let _forward = proxy_to(format!("unix://{}", anchor_proxy.display()).parse()?, moto.port).await?;
            let anchored_config = format!(
                "{config}privval-anchor-table = {table:?}\nprivval-anchor-endpoint = \"http://127.0.0.1:{}\"\nprivval-anchor-proxy = \"unix://{}\"\n",
                moto.port,
                anchor_proxy.display()
            );
            let anchored =
                EnclavePath::start_full(dev, local, nsm.clone(), &tmp.path().join("anchored"), None, &anchored_config, true).await?;
            anchored.supply_instance_credentials(dev)?;
            let anchored_rpc = Client::connect(&anchored.rpc, "nekms bench").await?;
            // The administrator's ciphertext of the anchor's credentials (moto takes any).
            let mut admin = Conn::open(&local.target(dev, "admin")?).await?;
            let context = serde_json::json!({"nekms:purpose": nekms_enclave::privval_anchor::PURPOSE_ANCHOR_CREDENTIALS, "nekms:anchor-table": table});
            use base64::Engine;
            let plaintext =
                base64::engine::general_purpose::STANDARD.encode(br#"{"access_key_id":"testing","secret_access_key":"testing"}"#);
            let ct = admin
                .call("Encrypt", &serde_json::json!({"KeyId": world.custody_key, "Plaintext": plaintext, "EncryptionContext": context}))
                .await?;
            let blob = base64::engine::general_purpose::STANDARD.decode(ct["CiphertextBlob"].as_str().context("no CiphertextBlob")?)?;
            anchored_rpc.privval(PrivvalRequest::SetAnchorCredentials { ciphertext: blob }).await?;
            let (mut link, relay, _laddr) = nekms_row(&anchored_rpc, &anchored, false, "anchored-unix".into()).await?;
            let row = summarise(closed_loop(&mut link, "anchored-unix", a.seconds).await?, a.seconds);
            print("nekms, state committed to the anchor on moto (Unix)", &row, None);
            drop(link);
            relay.abort();
        }
        Err(e) => println!("  (the anchor row is skipped: {e:#})"),
    }

    // Two chains at once on the durable signer, over Unix.
    let mut links = Vec::new();
    for c in ["two-a", "two-b"] {
        let (link, relay, laddr) = nekms_row(&durable_rpc, &durable, false, c.into()).await?;
        links.push((c, link, relay, laddr));
    }
    let seconds = a.seconds;
    let tasks: Vec<_> = links
        .into_iter()
        .map(|(c, mut link, relay, laddr)| {
            tokio::spawn(async move {
                let r = closed_loop(&mut link, c, seconds).await;
                relay.abort();
                drop(laddr);
                r
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    print("nekms, two chains at once, fdatasync (Unix; both chains)", &summarise(all, a.seconds), None);
    println!("  budget: nekms p99 under 20 ms (CometBFT waits 5 s), p50 within 2x of tmkms's in the same run");
    Ok(())
}

/// moto's server for the anchor row, one request at a time (as DynamoDB
/// makes an item's conditional writes atomic), with the table made.
struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Moto {
    async fn start(dir: &std::path::Path) -> anyhow::Result<Moto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let script = "import os, sys\nfrom werkzeug.serving import run_simple\nfrom moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app\nos.environ.setdefault('MOTO_PORT', sys.argv[1])\nrun_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)\n";
        let child = std::process::Command::new("python3")
            .args(["-c", script, &port.to_string()])
            .stdout(std::fs::File::create(dir.join("moto.log"))?)
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("python3")?;
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("moto's server did not start (pip install 'moto[server]')");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let create = format!(
            "import boto3; boto3.client('dynamodb', region_name='us-east-1', endpoint_url='http://127.0.0.1:{port}', aws_access_key_id='testing', aws_secret_access_key='testing').create_table(TableName='nekms-bench-anchor', KeySchema=[{{'AttributeName': 'pk', 'KeyType': 'HASH'}}], AttributeDefinitions=[{{'AttributeName': 'pk', 'AttributeType': 'S'}}], BillingMode='PAY_PER_REQUEST')"
        );
        let out = std::process::Command::new("python3").args(["-c", &create]).output()?;
        anyhow::ensure!(out.status.success(), "creating the table on moto: {}", String::from_utf8_lossy(&out.stderr));
        Ok(moto)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

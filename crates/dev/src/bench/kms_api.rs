//! `nekms bench kms-api`: `Sign` through the agent's KMS API (SigV4,
//! keep-alive, `--clients` connections), against (a) signing in this
//! process with the key in hand, (c) the agent's own API with a bearer
//! token, and (d) the local KMS's own asymmetric `Sign` (its keys in its
//! process: no enclave), in one run, one key spec at a time. Then where a
//! KMS API request's time goes: SigV4 signing (the client's) and checking
//! (the agent's), the JSON both ways, and the enclave's RPC (the rest).

use std::sync::Arc;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_keys::{KeySpec, PrivateKey, Scheme};
use nekms_kms::sigv4::{self, Credential, SignedRequest, Verifier};
use nekms_store::{SqliteStore, Store};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::measure::{measure, Cell};
use crate::kms::{Conn, Target};
use crate::world::{BenchWorld, EnclavePath};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    pub spec: Vec<KeySpec>,
    /// Keep-alive connections (loops) per cell.
    pub clients: usize,
    pub seconds: f64,
}

const AKID: &str = "AKIANEKMSBENCH000001";
const SECRET: &str = "nekms-bench-secret-access-key-0000000000";

/// KMS's name of a spec and the algorithm measured with it (the scheme in process).
fn kms_names(spec: KeySpec) -> (&'static str, &'static str, Scheme) {
    match spec {
        KeySpec::Secp256k1 => ("ECC_SECG_P256K1", "ECDSA_SHA_256", Scheme::EcdsaDer),
        KeySpec::P256 => ("ECC_NIST_P256", "ECDSA_SHA_256", Scheme::EcdsaDer),
        KeySpec::P384 => ("ECC_NIST_P384", "ECDSA_SHA_384", Scheme::EcdsaDer),
        KeySpec::Ed25519 => ("ECC_NIST_EDWARDS25519", "ED25519_SHA_512", Scheme::Ed25519),
        KeySpec::Rsa2048 => ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256", Scheme::RsaPkcs1(nekms_keys::Hash::Sha256)),
        KeySpec::Rsa3072 => ("RSA_3072", "RSASSA_PKCS1_V1_5_SHA_256", Scheme::RsaPkcs1(nekms_keys::Hash::Sha256)),
        KeySpec::Rsa4096 => ("RSA_4096", "RSASSA_PKCS1_V1_5_SHA_256", Scheme::RsaPkcs1(nekms_keys::Hash::Sha256)),
    }
}

fn row(label: &str, cell: Option<&Cell>, reference: &Cell, note: &str) {
    match cell {
        Some(c) => println!(
            "  {label:<44} {:>10.0} {:>9.3}ms {:>7.2}",
            c.per_second,
            c.p50.as_secs_f64() * 1000.0,
            c.per_second / reference.per_second
        ),
        None => println!("  {label:<44} {:>10} {:>11} {:>7}  {note}", "-", "-", "-"),
    }
}

/// `loops` loops of signed `Sign` calls to `target`.
async fn kms_sign(target: &Target, loops: usize, seconds: f64, body: Value) -> anyhow::Result<Cell> {
    let mut conns = Vec::new();
    for _ in 0..loops {
        conns.push(Arc::new(tokio::sync::Mutex::new(Conn::open(target).await?)));
    }
    measure(loops, seconds, |i| {
        let (conn, body) = (conns[i].clone(), body.clone());
        move || {
            let (conn, body) = (conn.clone(), body.clone());
            async move {
                conn.lock().await.call("Sign", &body).await?;
                anyhow::Ok(())
            }
        }
    })
    .await
}

/// Microseconds per call of `f`, over `n` calls.
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

pub async fn run(a: &Options) -> anyhow::Result<()> {
    let world = BenchWorld::new("nekms bench kms-api").await?;
    let (tmp, dev, local, config, nsm) = (&world.tmp, &world.dev, &world.local, &world.config, world.nsm.clone());
    let warm = EnclavePath::start_with(dev, local, nsm, &tmp.path().join("warm"), None, config).await?;
    warm.supply_instance_credentials(dev)?;
    // The agent, with both APIs, one caller each.
    let secret = tmp.path().join("bench.secret");
    std::fs::write(&secret, SECRET)?;
    let access_file = tmp.path().join("access.toml");
    let token = tmp.path().join("bench.token");
    std::fs::write(&token, "nekms-bench-token-0000000000000000")?;
    for f in [&secret, &token] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    std::fs::write(
        &access_file,
        format!(
            "[[client]]\nname = \"bench\"\nkms-access-key-id = \"{AKID}\"\nkms-secret-file = \"{}\"\ntoken-file = \"{}\"\nkeys = [\"*\"]\nmanage = true\nkms-key-prefix = \"bench-\"\n",
            secret.display(),
            token.display()
        ),
    )?;
    std::fs::set_permissions(&access_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let sqlite = SqliteStore::open(&tmp.path().join("agent.db"))?;
    let store = Store::Sqlite(sqlite.clone());
    let native_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let native_addr = native_listener.local_addr()?;
    let _native =
        nekms_agent::spawn(native_listener, warm.rpc.clone(), Store::Sqlite(sqlite), nekms_agent::Access::from_file(&access_file)?);
    let bearer = std::fs::read_to_string(&token)?;
    let kms_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let kms_addr = kms_listener.local_addr()?;
    let settings = nekms_agent::KmsApi {
        listen: nekms_agent::config::Listen::Unix("unused".into()),
        region: "us-east-1".into(),
        account: "111122223333".into(),
    };
    let _kms_api =
        nekms_agent::spawn_kms_api(kms_listener, warm.rpc.clone(), store, nekms_agent::Access::from_file(&access_file)?, &settings);
    let credential = Credential {
        access_key_id: AKID.into(),
        secret_access_key: Zeroizing::new(SECRET.into()),
        session_token: None,
        expires: None,
        principal_arn: "arn:aws:iam::111122223333:user/bench".into(),
    };
    let ours = Target { name: "the agent's KMS API", addr: kms_addr, credential: credential.clone(), via: None };
    let theirs = local.target(dev, "admin")?;
    let message = b"nekms bench: a 32-byte message..".to_vec();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "nekms bench kms-api: Sign, {} keep-alive connections, {} s per cell, {cores} cores; the reference, the enclave, the agent and the local KMS share this process",
        a.clients, a.seconds
    );
    println!("  {:<44} {:>10} {:>11} {:>7}", "path", "sig/s", "p50", "ratio");
    for &spec in &a.spec {
        let (kms_spec, algorithm, scheme) = kms_names(spec);
        let mut c = Conn::open(&ours).await?;
        let created = c.call("CreateKey", &json!({"KeySpec": kms_spec, "KeyUsage": "SIGN_VERIFY"})).await?;
        let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap_or_default().to_owned();
        let body = json!({"KeyId": key_id, "Message": B64.encode(&message), "MessageType": "RAW", "SigningAlgorithm": algorithm});
        println!("{spec} ({algorithm}):");
        let key = Arc::new(PrivateKey::generate(spec, &[7u8; 64])?);
        let reference = super::sign::in_process(&key, scheme, &message, a.clients, a.seconds).await?;
        let through = kms_sign(&ours, a.clients, a.seconds, body.clone()).await?;
        let native_body = hyper::body::Bytes::from(serde_json::to_vec(&json!({"message_hex": hex::encode(&message)}))?);
        let path = format!("/v1/keys/{key_id}/sign");
        let native = super::sign::through_agent(native_addr, &bearer, &path, native_body, a.clients, a.seconds).await?;
        // The local KMS's own asymmetric key of the same spec, if it has the spec.
        let mut admin = Conn::open(&theirs).await?;
        let local_cell = match admin.call_raw("CreateKey", &json!({"KeySpec": kms_spec, "KeyUsage": "SIGN_VERIFY"})).await? {
            (200, v) => {
                let mut b = body.clone();
                b["KeyId"] = v["KeyMetadata"]["KeyId"].clone();
                Some(kms_sign(&theirs, a.clients, a.seconds, b).await?)
            }
            _ => None,
        };
        row("(a) in process, key in hand (ref)", Some(&reference), &reference, "");
        row("(b) agent KMS API (SigV4) -> enclave RPC", Some(&through), &reference, "");
        row("(c) agent's own API (bearer) -> enclave RPC", Some(&native), &reference, "");
        row("(d) local KMS's own asymmetric Sign", local_cell.as_ref(), &reference, "the local KMS has no such key spec");
        if let Some(l) = &local_cell {
            println!("  (b) / (d): {:.2}", through.per_second / l.per_second);
        }
    }
    // Where a request's time goes, each part alone on one core.
    let body = serde_json::to_vec(
        &json!({"KeyId": "bench-k", "Message": B64.encode(&message), "MessageType": "RAW", "SigningAlgorithm": "ECDSA_SHA_256"}),
    )?;
    let host = kms_addr.to_string();
    let base = vec![
        ("host".to_owned(), host.clone()),
        ("content-type".to_owned(), "application/x-amz-json-1.1".to_owned()),
        ("x-amz-target".to_owned(), "TrentService.Sign".to_owned()),
    ];
    let now = time::OffsetDateTime::now_utc();
    let sign_us = per_call(20_000, || {
        let mut h = base.clone();
        sigv4::sign("POST", "/", "", &mut h, &body, &credential, "us-east-1", "kms", now);
    });
    let mut signed = base.clone();
    sigv4::sign("POST", "/", "", &mut signed, &body, &credential, "us-east-1", "kms", now);
    let verifier = Verifier::new("us-east-1", "kms");
    let verify_us = per_call(20_000, || {
        let req = SignedRequest { method: "POST", path: "/", query: "", headers: &signed, body: &body };
        verifier.verify(&req, now, |_| Some(credential.clone())).expect("verifies");
    });
    let json_us = per_call(20_000, || {
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        let reply = json!({"KeyId": v["KeyId"], "Signature": B64.encode([0u8; 72]), "SigningAlgorithm": v["SigningAlgorithm"]});
        std::hint::black_box(serde_json::to_vec(&reply).expect("JSON"));
    });
    println!(
        "where a KMS API request's time goes (one core): SigV4 signing {sign_us:.1} us (the client), SigV4 checking {verify_us:.1} us, JSON in and out {json_us:.1} us; the rest is HTTP and the enclave RPC (`nekms bench sign` (b))"
    );
    Ok(())
}

//! `nekms demo`'s key-custody steps, in this process over Unix sockets:
//! the two-enclave document (enclave 1 generates, enclave 2 signs, each
//! refused the other's job), the lock-out document (a seed only the enclave
//! can decrypt signs a transaction) and a tmkms-style Ed25519 import.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_devworld::DevDir;
use nekms_keys::{KeyRecord, KeySpec, Payload, Scheme};
use nekms_nsm::measure::Measurement;
use nekms_nsm::{Nsm, SimConfig, SimulatedNsm};
use nekms_rpc::{Client, Entropy, GenerateKey, ImportKey};
use nekms_store::{KeyStore, SqliteStore};
use serde_json::json;

use crate::enclave_path::{create_key, custody_policy, EnclavePath};
use crate::kms_client::{Conn, InProcessKms};

/// The two-enclave document's Deny statements, one per PCR: KMS ANDs the
/// keys of one condition, so PCR0/1/2 in a single StringNotEqualsIgnoreCase
/// would let another image with the same kernel (PCR1) through.
pub fn two_enclave_policy(account: &str, generator: &Measurement, signer: &Measurement) -> serde_json::Value {
    let instance = format!("arn:aws:iam::{account}:role/nekms-instance");
    let deny = |actions: serde_json::Value, m: &Measurement| -> Vec<serde_json::Value> {
        [m.pcr0, m.pcr1, m.pcr2]
            .iter()
            .enumerate()
            .map(|(i, pcr)| {
                json!({"Effect": "Deny", "Principal": {"AWS": instance}, "Action": actions, "Resource": "*",
                       "Condition": {"StringNotEqualsIgnoreCase": {format!("kms:RecipientAttestation:PCR{i}"): pcr.to_hex()}}})
            })
            .collect()
    };
    let mut statements = vec![
        json!({"Sid": "Instance role", "Effect": "Allow", "Principal": {"AWS": instance},
               "Action": ["kms:GenerateDataKey", "kms:GenerateRandom", "kms:Decrypt", "kms:Encrypt"], "Resource": "*"}),
        json!({"Sid": "Administrators", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{account}:role/nekms-key-admin")},
               "Action": "kms:*", "Resource": "*"}),
    ];
    statements.extend(deny(json!(["kms:GenerateDataKey", "kms:GenerateRandom"]), generator));
    statements.extend(deny(json!("kms:Decrypt"), signer));
    json!({"Version": "2012-10-17", "Statement": statements})
}

struct Running {
    _path: EnclavePath,
    client: Client,
}

async fn enclave(dir: &DevDir, local: &InProcessKms, measurement: &Measurement, run_dir: &Path) -> anyhow::Result<Running> {
    let mut sim = SimConfig::new(measurement.clone());
    sim.parent_instance_id = Some(dir.config()?.instance_id);
    let nsm: Arc<dyn Nsm> = Arc::new(SimulatedNsm::boot(sim, dir.document_signer()?));
    let path = EnclavePath::start(dir, local, nsm, run_dir).await?;
    path.supply_instance_credentials(dir)?;
    let client = Client::connect(&path.rpc, "nekms demo").await?;
    Ok(Running { _path: path, client })
}

fn refused<T>(r: Result<T, nekms_rpc::ClientError>) -> String {
    match r {
        Ok(_) => "ALLOWED (unexpected)".into(),
        Err(e) => e.remote().and_then(|r| r.kms_code.clone()).unwrap_or_else(|| e.to_string()),
    }
}

fn describe(r: &KeyRecord) {
    println!(
        "      record {}: {} public key {} B, encrypted data key {} B, sealed private key {} B, attestation {} B",
        r.key_id,
        r.spec,
        r.public_key.len(),
        r.encrypted_data_key.len(),
        r.sealed_private_key.len(),
        r.attestation.as_ref().map_or(0, Vec::len)
    );
}

pub async fn two_enclaves(dir: &DevDir, local: &InProcessKms, store: &SqliteStore) -> anyhow::Result<()> {
    let generator = Measurement::of_image(b"nekms demo: enclave 1 (generates keys)", None);
    let signer = Measurement::of_image(b"nekms demo: enclave 2 (signs)", None);
    let e1 = enclave(dir, local, &generator, &dir.path().join("demo-keys/enclave1")).await?;
    let e2 = enclave(dir, local, &signer, &dir.path().join("demo-keys/enclave2")).await?;
    println!("    enclave 1 PCR0 {}…, enclave 2 PCR0 {}… (same kernel, PCR1)", &generator.pcr0.to_hex()[..16], &signer.pcr0.to_hex()[..16]);
    let policy = two_enclave_policy(&dir.config()?.account_id, &generator, &signer);
    let key = create_key(dir, local, "nekms demo: two enclaves", &policy).await?;
    println!("    KMS key {key}: GenerateDataKey/GenerateRandom denied unless PCR0/1/2 are enclave 1's, Decrypt unless they are enclave 2's");

    let record = e1
        .client
        .generate_key(GenerateKey {
            key_id: "u001".into(),
            spec: KeySpec::Secp256k1,
            kms_key_id: key.clone(),
            entropy: Entropy::Kms,
            encryption_context: Default::default(),
            nonce: None,
        })
        .await?;
    println!("    enclave 1 made a secp256k1 key from NSM, OS and KMS GenerateRandom entropy and sealed it:");
    describe(&record);
    let _ = store.delete(&record.key_id).await?;
    store.create(&record).await?;
    let public = record.public()?;
    println!("      stored in SQLite; Ethereum address {}", public.eth_address().expect("secp256k1").to_checksum(None));

    let message = Payload::Message(b"Hello World".to_vec());
    let sig = e2.client.sign(record.clone(), None, message.clone()).await?;
    public.verify(Scheme::EcdsaDer, &message, &sig.signature)?;
    println!("    enclave 2 signed \"Hello World\": {}…; the parent verified it with the public key", &hex::encode(&sig.signature)[..24]);
    println!("    enclave 1 signing the same record   -> refused: {}", refused(e1.client.sign(record.clone(), None, message.clone()).await));
    let again = GenerateKey {
        key_id: "u002".into(),
        spec: KeySpec::Secp256k1,
        kms_key_id: key.clone(),
        entropy: Entropy::Nsm,
        encryption_context: Default::default(),
        nonce: None,
    };
    println!("    enclave 2 generating a key          -> refused: {}", refused(e2.client.generate_key(again).await));
    let mut instance = Conn::open(&local.target(dir, "instance")?).await?;
    let (_, v) = instance
        .call_raw("Decrypt", &json!({"CiphertextBlob": B64.encode(&record.encrypted_data_key), "EncryptionContext": record.encryption_context}))
        .await?;
    println!("    the instance role decrypting the data key -> refused: {}", v["__type"].as_str().unwrap_or("?"));
    Ok(())
}

pub async fn lockout_and_tmkms(dir: &DevDir, local: &InProcessKms, measurement: &Measurement, store: &SqliteStore) -> anyhow::Result<()> {
    let e = enclave(dir, local, measurement, &dir.path().join("demo-keys/lockout")).await?;
    let key = create_key(dir, local, "nekms demo: lock-out", &custody_policy(&dir.config()?.account_id, &measurement.pcr0.to_hex())).await?;
    println!("    KMS key {key}: no root statement; only this enclave image may decrypt or generate data keys");
    let mut instance = Conn::open(&local.target(dir, "instance")?).await?;
    let mut root = Conn::open(&local.target(dir, "root")?).await?;
    // A well-known test key (Ganache's first account); use your own seed in real life.
    let seed = b"0x4f3edf983ac636a65a842ce7c78d9aa706d3b113bce9c46f30d7d21715b23b1d";
    let ct = instance.call("Encrypt", &json!({"KeyId": key, "Plaintext": B64.encode(seed)})).await?;
    let blob = ct["CiphertextBlob"].as_str().context("Encrypt gave no CiphertextBlob")?.to_owned();
    println!("    the instance encrypted a seed (as the lock-out document keeps it in Secrets Manager)");
    let (_, v) = root.call_raw("Decrypt", &json!({"CiphertextBlob": blob})).await?;
    println!("    the account root decrypting it      -> refused: {}", v["__type"].as_str().unwrap_or("?"));
    let (_, v) = instance.call_raw("Decrypt", &json!({"CiphertextBlob": blob})).await?;
    println!("    the instance role decrypting it     -> refused: {}", v["__type"].as_str().unwrap_or("?"));
    let import = |name: &str, spec, blob: &str| ImportKey {
        key_id: name.into(),
        spec: Some(spec),
        kms_key_id: key.clone(),
        ciphertext: B64.decode(blob).unwrap_or_default(),
        ciphertext_context: Default::default(),
        ciphertext_key_id: None,
        encryption_context: Default::default(),
        nonce: None,
    };
    let record = e.client.import_key(import("lockout", KeySpec::Secp256k1, &blob)).await?;
    let address = record.public()?.eth_address().expect("secp256k1").to_checksum(None);
    println!("    the enclave decrypted it with its attestation and resealed it as a record: address {address}");
    let _ = store.delete(&record.key_id).await?;
    store.create(&record).await?;
    let tx = json!({"type": 2, "chainId": 1, "nonce": 0, "to": "0x000000000000000000000000000000000000dEaD", "value": "1000000000000000",
                    "gas": 21000, "maxFeePerGas": 30_000_000_000u64, "maxPriorityFeePerGas": 1_000_000_000u64});
    let sig = e.client.sign(record, None, Payload::Transaction(tx.to_string())).await?;
    println!("    it signed an EIP-1559 transaction: hash 0x{}", hex::encode(sig.transaction_hash.unwrap_or_default()));
    println!("      raw 0x{}…", &hex::encode(sig.raw_transaction.unwrap_or_default())[..40]);

    // tmkms: `tmkms softsign keygen` writes base64 of the Ed25519 seed.
    let seed = [0x5au8; 32];
    let softsign = B64.encode(seed);
    let ct = instance.call("Encrypt", &json!({"KeyId": key, "Plaintext": B64.encode(softsign.as_bytes())})).await?;
    let blob = ct["CiphertextBlob"].as_str().context("Encrypt gave no CiphertextBlob")?.to_owned();
    let record = e.client.import_key(import("validator", KeySpec::Ed25519, &blob)).await?;
    let public = record.public()?;
    let _ = store.delete(&record.key_id).await?;
    store.create(&record).await?;
    let vote = Payload::Message(b"a canonical vote".to_vec());
    let sig = e.client.sign(record, None, vote.clone()).await?;
    public.verify(Scheme::Ed25519, &vote, &sig.signature)?;
    println!("    tmkms: an Ed25519 softsign key imported the same way signed a vote; verified with its public key {}…", &hex::encode(public.point())[..16]);
    Ok(())
}

//! `nekms demo`'s key-custody steps (9 and 10), in this process over Unix
//! sockets: the two-enclave document (enclave 1 generates, enclave 2 signs,
//! each refused the other's job), the lock-out document (a seed only the
//! enclave can decrypt signs a transaction) and a tmkms-style Ed25519 import
//! that the validator signer then uses ([`super::privval`]). Each custody
//! key is set up in two steps (bootstrap policy, then the final one naming
//! the measured images), and the parent's attempts to get a key out through
//! the enclave itself are shown refused.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_devworld::DevDir;
use nekms_keys::context::{import_context, import_context_with_usage, Usage, KEY_ID, PURPOSE, PURPOSE_IMPORT};
use nekms_keys::{KeyRecord, KeySpec, Payload, RecordExt, Scheme};
use nekms_nsm::measure::Measurement;
use nekms_nsm::{Nsm, SimConfig, SimulatedNsm};
use nekms_rpc::{Client, Entropy, GenerateKey, ImportKey, Request};
use nekms_store::{KeyStore, SqliteStore};
use serde_json::json;

use crate::custody::{custody_key, trust_toml};
use crate::key_policy;
use crate::kms::{Conn, InProcessKms};
use crate::kmstool_client::KmstoolClient;
use crate::world::EnclavePath;

fn pcrs(m: &Measurement) -> [String; 3] {
    [m.pcr0.to_hex(), m.pcr1.to_hex(), m.pcr2.to_hex()]
}

/// An enclave of the demo and the RPC client that talks to it.
pub(super) struct Running {
    pub(super) path: EnclavePath,
    pub(super) client: Client,
}

/// An in-process enclave booted with `measurement` (which covers `config`).
async fn enclave(dir: &DevDir, local: &InProcessKms, measurement: &Measurement, config: &str, run_dir: &Path) -> anyhow::Result<Running> {
    let mut sim = SimConfig::new(measurement.clone());
    sim.parent_instance_id = Some(dir.config()?.instance_id);
    let nsm: Arc<dyn Nsm> = Arc::new(SimulatedNsm::boot(sim, dir.document_signer()?));
    let path = EnclavePath::start_with(dir, local, nsm, run_dir, None, config).await?;
    path.supply_instance_credentials(dir)?;
    let client = Client::connect(&path.rpc, "nekms demo").await?;
    Ok(Running { path, client })
}

/// The rule an error message names (`rule NAME: ...`), if any.
fn rule(message: &str) -> Option<String> {
    let at = message.find("rule ")?;
    Some(message[at..].split(':').next().unwrap_or_default().to_owned())
}

/// What refused a call: the enclave's rule and/or KMS's exception.
fn refused<T>(r: Result<T, nekms_rpc::ClientError>) -> String {
    match r {
        Ok(_) => "ALLOWED (unexpected)".into(),
        Err(e) => match e.remote() {
            Some(r) => match (rule(&r.message), &r.kms_code) {
                (Some(rule), Some(kms)) => format!("{rule} ({kms})"),
                (Some(rule), None) => rule,
                (None, Some(kms)) => kms.clone(),
                (None, None) => r.message.clone(),
            },
            None => e.to_string(),
        },
    }
}

fn describe(r: &KeyRecord) {
    println!(
        "      record {}: {} public key {} B, encrypted data key {} B, sealed private key {} B, origin document {} B",
        r.key_id,
        r.spec,
        r.public_key.len(),
        r.encrypted_data_key.len(),
        r.sealed_private_key.len(),
        r.attestation.as_ref().map_or(0, Vec::len)
    );
}

fn generate(key_id: &str, entropy: Entropy) -> GenerateKey {
    GenerateKey {
        key_id: key_id.into(),
        spec: KeySpec::Secp256k1,
        kms_key_id: None,
        entropy,
        encryption_context: Default::default(),
        nonce: None,
        decrypt: false,
        privval: false,
        decrypt_only: false,
    }
}

pub(super) async fn two_enclaves(dir: &DevDir, local: &InProcessKms, store: &SqliteStore) -> anyhow::Result<()> {
    let (key, (c1, m1, c2, m2)) = custody_key(
        dir,
        &local.target(dir, "admin")?,
        "nekms demo: two enclaves",
        |arn| {
            let c1 = trust_toml(&[arn], &[]);
            let m1 = Measurement::of_image(b"nekms demo: enclave 1 (generates keys)", Some(c1.as_bytes()));
            let c2 = trust_toml(&[arn], &[m1.pcr0.to_hex()]);
            let m2 = Measurement::of_image(b"nekms demo: enclave 2 (signs)", Some(c2.as_bytes()));
            Ok((c1, m1, c2, m2))
        },
        |roles, (_, m1, _, m2)| key_policy::two_enclaves(roles, pcrs(m1), pcrs(m2)),
    )
    .await?;
    println!("    KMS key {key}, set up in two steps:");
    println!("      1. the administrator created it with a bootstrap policy (nobody may use it)");
    println!("      2. each enclave's measured configuration pins it; enclave 2's also trusts enclave 1's records (origin-pcr0)");
    println!("      3. the final policy names both images and denies PutKeyPolicy, CreateGrant and ReEncrypt to everyone");
    println!("    enclave 1 PCR0 {}…, enclave 2 PCR0 {}…", &m1.pcr0.to_hex()[..16], &m2.pcr0.to_hex()[..16]);
    let e1 = enclave(dir, local, &m1, &c1, &dir.path().join("demo-keys/enclave1")).await?;
    let e2 = enclave(dir, local, &m2, &c2, &dir.path().join("demo-keys/enclave2")).await?;

    let record = e1.client.generate_key(generate("u001", Entropy::Kms)).await?;
    println!("    enclave 1 made a secp256k1 key from NSM, OS and KMS GenerateRandom entropy and sealed it:");
    describe(&record);
    let _ = store.delete(&record.key_id).await?;
    store.create(&record).await?;
    let public = record.public()?;
    println!("      stored in SQLite; Ethereum address {}", public.eth_address().expect("secp256k1").to_checksum(None));

    let message = Payload::Message(b"Hello World".to_vec());
    let sig = e2.client.sign(record.clone(), None, message.clone()).await?;
    public.verify(Scheme::EcdsaDer, &message, &sig.signature)?;
    println!(
        "    enclave 2 checked the record's origin document, signed \"Hello World\": {}…; the parent verified it",
        &hex::encode(&sig.signature)[..24]
    );
    println!(
        "    enclave 1 signing the same record   -> refused: {}",
        refused(e1.client.sign(record.clone(), None, message.clone()).await)
    );
    println!(
        "    enclave 2 generating a key          -> refused: {}",
        refused(e2.client.generate_key(generate("u002", Entropy::Nsm)).await)
    );
    let mut instance = Conn::open(&local.target(dir, "instance")?).await?;
    let (_, v) = instance
        .call_raw(
            "Decrypt",
            &json!({"CiphertextBlob": B64.encode(&record.encrypted_data_key), "EncryptionContext": record.encryption_context}),
        )
        .await?;
    println!("    the instance role decrypting the data key -> refused: {}", v["__type"].as_str().unwrap_or("?"));
    let ask = Request::Decrypt {
        ciphertext: record.encrypted_data_key.clone(),
        encryption_context: record.encryption_context.clone(),
        key_id: None,
    };
    println!("    the parent asking enclave 2 itself for it -> refused: {}", refused(e2.client.call(&ask).await));
    Ok(())
}

pub(super) async fn lockout_and_tmkms(dir: &DevDir, local: &InProcessKms, image: &Path, store: &SqliteStore) -> anyhow::Result<()> {
    let binary = std::fs::read(image).with_context(|| image.display().to_string())?;
    let (key, (config, m)) = custody_key(
        dir,
        &local.target(dir, "admin")?,
        "nekms demo: lock-out",
        |arn| {
            // kmstool's service stays on, to show custody material refused on it anyway.
            let config = trust_toml(&[arn], &[]) + "allow-import = true\nparent-decrypt = true\n";
            let m = Measurement::of_image(&binary, Some(config.as_bytes()));
            Ok((config, m))
        },
        |roles, (_, m)| key_policy::custody(roles, &[m.pcr0.to_hex()]),
    )
    .await?;
    println!("    KMS key {key}: pinned in the enclave's configuration (custody-kms-keys), which PCR0 {}… covers", &m.pcr0.to_hex()[..16]);
    println!("      final policy: no root statement; only that image may decrypt or generate data keys; the administrator may only");
    println!("      manage the key and encrypt import ciphertexts; PutKeyPolicy, CreateGrant and ReEncrypt are denied to everyone");
    let e = enclave(dir, local, &m, &config, &dir.path().join("demo-keys/lockout")).await?;
    let mut admin = Conn::open(&local.target(dir, "admin")?).await?;
    let mut instance = Conn::open(&local.target(dir, "instance")?).await?;
    let mut root = Conn::open(&local.target(dir, "root")?).await?;

    // A well-known test key (Ganache's first account); use your own seed in real life.
    let seed = b"0x4f3edf983ac636a65a842ce7c78d9aa706d3b113bce9c46f30d7d21715b23b1d";
    let context = import_context("lockout", KeySpec::Secp256k1, &Default::default())?;
    let ct = admin.call("Encrypt", &json!({"KeyId": key, "Plaintext": B64.encode(seed), "EncryptionContext": context})).await?;
    let blob = ct["CiphertextBlob"].as_str().context("Encrypt gave no CiphertextBlob")?.to_owned();
    println!("    the administrator encrypted a seed for import ({PURPOSE}={PURPOSE_IMPORT}, {KEY_ID}=lockout, nekms:key-spec=secp256k1), as nekms key encrypt-for-import does");
    println!("      (this enclave's measured configuration says allow-import = true, and keeps kmstool's decrypt service on)");
    let (_, v) = root.call_raw("Decrypt", &json!({"CiphertextBlob": blob, "EncryptionContext": context})).await?;
    println!("    the account root decrypting it      -> refused: {}", v["__type"].as_str().unwrap_or("?"));
    let (_, v) = instance.call_raw("Decrypt", &json!({"CiphertextBlob": blob, "EncryptionContext": context})).await?;
    println!("    the instance role decrypting it     -> refused: {}", v["__type"].as_str().unwrap_or("?"));
    let open_policy =
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}]});
    let (_, v) = admin
        .call_raw(
            "PutKeyPolicy",
            &json!({"KeyId": key, "PolicyName": "default", "Policy": open_policy.to_string(), "BypassPolicyLockoutSafetyCheck": true}),
        )
        .await?;
    println!("    the administrator reopening the key -> refused: {}", v["__type"].as_str().unwrap_or("?"));
    let (_, v) =
        instance.call_raw("Encrypt", &json!({"KeyId": key, "Plaintext": B64.encode([7u8; 32]), "EncryptionContext": context})).await?;
    println!("    the instance minting an import      -> refused: {}", v["__type"].as_str().unwrap_or("?"));

    // Through the enclave itself, as root on the parent would try.
    let ciphertext = B64.decode(&blob)?;
    let parent_decrypt = |context| Request::Decrypt { ciphertext: ciphertext.clone(), encryption_context: context, key_id: None };
    println!(
        "    the parent asking the enclave (RPC Decrypt) for the import plaintext -> refused: {}",
        refused(e.client.call(&parent_decrypt(context.clone())).await)
    );
    let shouted = context.iter().map(|(k, v)| (k.to_uppercase(), v.clone())).collect();
    println!(
        "      the same with the context keys upper-cased                        -> refused: {}",
        refused(e.client.call(&parent_decrypt(shouted)).await)
    );
    let p = dir.principals()?.into_iter().find(|p| p.name == "instance").context("no instance principal")?;
    let mut kmstool = KmstoolClient::connect(&e.path.kmstool).await?;
    kmstool.set_client(&p.access_key_id, &p.secret_access_key, p.session_token.as_deref(), Some("us-east-1")).await?;
    let why = kmstool.decrypt(&blob, &context).await.map(|_| ()).unwrap_err();
    println!(
        "      the same through kmstool's port                                  -> refused: {}",
        rule(&format!("{why:#}")).unwrap_or_else(|| format!("{why:#}"))
    );

    let import = |name: &str, spec, blob: &str| ImportKey {
        key_id: name.into(),
        spec: Some(spec),
        kms_key_id: None,
        ciphertext: B64.decode(blob).unwrap_or_default(),
        ciphertext_context: Default::default(),
        ciphertext_key_id: None,
        encryption_context: Default::default(),
        nonce: None,
        decrypt: false,
        privval: false,
    };
    println!(
        "    importing it under another name     -> refused: {}",
        refused(e.client.import_key(import("other", KeySpec::Secp256k1, &blob)).await)
    );
    let record = e.client.import_key(import("lockout", KeySpec::Secp256k1, &blob)).await?;
    let address = record.public()?.eth_address().expect("secp256k1").to_checksum(None);
    println!("    the enclave decrypted it with its attestation and resealed it as a record: address {address}");
    let _ = store.delete(&record.key_id).await?;
    store.create(&record).await?;
    let tx = json!({"type": 2, "chainId": 1, "nonce": 0, "to": "0x000000000000000000000000000000000000dEaD", "value": "1000000000000000",
                    "gas": 21000, "maxFeePerGas": 30_000_000_000u64, "maxPriorityFeePerGas": 1_000_000_000u64});
    let sig = e.client.sign(record.clone(), None, Payload::Transaction(tx.to_string())).await?;
    println!("    it signed an EIP-1559 transaction: hash 0x{}", hex::encode(sig.transaction_hash.unwrap_or_default()));
    println!("      raw 0x{}…", &hex::encode(sig.raw_transaction.unwrap_or_default())[..40]);

    let data_key = Request::Decrypt {
        ciphertext: record.encrypted_data_key.clone(),
        encryption_context: record.encryption_context.clone(),
        key_id: None,
    };
    println!("    the parent asking the enclave for the record's data key   -> refused: {}", refused(e.client.call(&data_key).await));
    let own_key =
        Request::Attest { nonce: None, user_data: None, public_key: Some(nekms_cms::RecipientKey::generate()?.public_key_der()?) };
    println!("    the parent asking for a document over its own RSA key     -> refused: {}", refused(e.client.call(&own_key).await));
    let plant = Request::GenerateDataKey {
        key_id: key.clone(),
        key_spec: Some("AES_256".into()),
        number_of_bytes: None,
        encryption_context: record.encryption_context.clone(),
    };
    println!("    the parent asking for a data key to plant its own record  -> refused: {}", refused(e.client.call(&plant).await));
    let mut copied = record.clone();
    copied.key_id = "copy".into();
    println!(
        "    the record copied under another name                       -> refused: {}",
        refused(e.client.sign(copied, None, Payload::Message(b"x".to_vec())).await)
    );

    // tmkms: `tmkms softsign keygen` writes base64 of the Ed25519 seed. It
    // becomes a consensus key (nekms:usage=privval): only the validator signer uses it.
    let softsign = B64.encode([0x5au8; 32]);
    let context = import_context_with_usage("validator", KeySpec::Ed25519, &Default::default(), Usage::Privval)?;
    let ct =
        admin.call("Encrypt", &json!({"KeyId": key, "Plaintext": B64.encode(softsign.as_bytes()), "EncryptionContext": context})).await?;
    let blob = ct["CiphertextBlob"].as_str().context("Encrypt gave no CiphertextBlob")?.to_owned();
    let mut consensus = import("validator", KeySpec::Ed25519, &blob);
    println!("    a tmkms softsign key, encrypted for import as a consensus key (nekms:usage=privval):");
    println!("      imported as a plain signing key      -> refused: {}", refused(e.client.import_key(consensus.clone()).await));
    consensus.privval = true;
    let record = e.client.import_key(consensus).await?;
    let public = record.public()?;
    let _ = store.delete(&record.key_id).await?;
    store.create(&record).await?;
    println!("      imported as a consensus key: public key {}…", &hex::encode(public.point())[..16]);
    let vote = Payload::Message(b"a canonical vote".to_vec());
    println!("      the general Sign with it             -> refused: {}", refused(e.client.sign(record.clone(), None, vote).await));
    super::privval::privval_signer(&e, &record).await
}

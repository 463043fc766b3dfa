//! The enclave's native RPC in process, over a Unix socket: what it says about
//! itself matches the measurement, its documents verify, bad calls are refused
//! before KMS is asked, and KMS being unreachable is reported as such.

use std::sync::Arc;

use nekms_attestation::{Verifier, VerifyOptions};
use nekms_devworld::DevDir;
use nekms_enclave::config::EnclaveArgs;
use nekms_enclave::Enclave;
use nekms_nsm::measure::Measurement;
use nekms_nsm::{SimConfig, SimulatedNsm};
use nekms_rpc::{Client, CredentialsUpdate, ErrorCode, SecretString};
use nekms_transport::{Address, Listener};

struct Running {
    client: Client,
    measurement: Measurement,
    dev: DevDir,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn enclave(image: &[u8]) -> Running {
    enclave_with(image, "").await
}

/// An enclave whose measured configuration is `config` (TOML).
async fn enclave_with(image: &[u8], config: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevDir::new(dir.path().join("dev"));
    dev.init().unwrap();
    let measurement = Measurement::of_image(image, Some(config.as_bytes()));
    let nsm = Arc::new(SimulatedNsm::boot(SimConfig::new(measurement.clone()), dev.document_signer().unwrap()));
    // Nothing listens on this proxy address: KMS is unreachable.
    let args = EnclaveArgs {
        proxy: Some(format!("unix://{}/no-proxy.sock", dir.path().display())),
        sim: true,
        dev_dir: Some(dev.path().to_path_buf()),
        ..Default::default()
    };
    let config = args.resolve(EnclaveArgs::from_toml(config).unwrap());
    let enclave = Arc::new(Enclave::new(nsm, &config).unwrap());
    let address: Address = format!("unix://{}/rpc.sock", dir.path().display()).parse().unwrap();
    let listener = Listener::bind(&address).await.unwrap();
    let task = tokio::spawn(nekms_rpc::serve(listener, enclave, Default::default()));
    let client = Client::connect(&address, "test").await.unwrap();
    Running { client, measurement, dev, _dir: dir, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_and_documents_report_the_measured_pcrs() {
    let e = enclave(b"an enclave image").await;
    let d = e.client.describe().await.unwrap();
    assert!(d.simulated);
    assert_eq!(d.protocol_version, 1);
    let pcr = |i: u16| d.pcrs.iter().find(|p| p.index == i).unwrap().value.clone();
    assert_eq!(pcr(0), e.measurement.pcr0.0.to_vec());
    assert_eq!(pcr(1), e.measurement.pcr1.0.to_vec());
    assert_eq!(pcr(2), e.measurement.pcr2.0.to_vec());
    assert!(d.credentials.is_none());
    assert_eq!(d.recipient_key_sha256.len(), 32);

    let document = e.client.attest(Some(b"nonce-1".to_vec()), Some(b"hello".to_vec()), None).await.unwrap();
    let verifier = Verifier::from_pem(&std::fs::read_to_string(e.dev.root_cert_path()).unwrap()).unwrap();
    let options = VerifyOptions::now()
        .expect_nonce(b"nonce-1".to_vec())
        .expect_pcr(0, e.measurement.pcr0)
        .expect_pcr(1, e.measurement.pcr1)
        .expect_pcr(2, e.measurement.pcr2);
    let verified = verifier.verify(&document, &options).unwrap();
    assert_eq!(verified.document.user_data.as_deref(), Some(&b"nekms-caller:v1:hello"[..]), "caller data is domain-separated");
    assert_eq!(verified.document.public_key, None);

    // Another image's enclave reports other PCRs.
    let other = enclave(b"a rebuilt enclave image").await;
    let d2 = other.client.describe().await.unwrap();
    assert_ne!(d2.pcrs[0].value, pcr(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_are_refused_before_kms_is_asked() {
    let e = enclave(b"image").await;
    fn code<T: std::fmt::Debug>(r: Result<T, nekms_rpc::ClientError>) -> ErrorCode {
        r.unwrap_err().remote().expect("an error reply").code
    }
    assert_eq!(code(e.client.attest(Some(vec![0; 513]), None, None).await), ErrorCode::BadRequest);
    assert_eq!(code(e.client.attest(None, Some(vec![0; 497]), None).await), ErrorCode::BadRequest, "512 less the caller prefix");
    assert_eq!(code(e.client.attest(None, None, Some(vec![0; 294])).await), ErrorCode::Refused, "the enclave attests only keys it holds");
    assert_eq!(code(e.client.generate_random(0).await), ErrorCode::BadRequest);
    assert_eq!(code(e.client.generate_random(1025).await), ErrorCode::BadRequest);
    assert_eq!(
        code(e.client.generate_data_key("alias/k".into(), Some("AES_512".into()), None, Default::default()).await),
        ErrorCode::BadRequest
    );
    // No credentials yet.
    assert_eq!(code(e.client.decrypt(vec![1; 40], Default::default(), None).await), ErrorCode::NoCredentials);

    let update = |expiration| CredentialsUpdate {
        access_key_id: "ASIAEXAMPLE".into(),
        secret_access_key: SecretString::new("secret"),
        session_token: Some(SecretString::new("token")),
        region: Some("eu-west-1".into()),
        expiration,
    };
    let past = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 10;
    assert_eq!(code(e.client.set_credentials(update(Some(past))).await), ErrorCode::CredentialsExpired);
    assert!(e.client.describe().await.unwrap().credentials.is_none(), "expired credentials are not installed");

    let info = e.client.set_credentials(update(Some(past + 3600))).await.unwrap();
    assert_eq!((info.access_key_id.as_str(), info.region.as_str(), info.temporary), ("ASIAEXAMPLE", "eu-west-1", true));
    assert_eq!(e.client.describe().await.unwrap().credentials, Some(info));

    // KMS is unreachable (no proxy): Unavailable, and the enclave keeps answering.
    let err = e.client.generate_random(16).await.unwrap_err();
    assert_eq!(err.remote().unwrap().code, ErrorCode::Unavailable, "{err}");
    assert!(e.client.describe().await.is_ok());
}

const CUSTODY: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enclaves_rules_refuse_before_kms_is_asked() {
    // kmstool's service on, to see custody material refused on it anyway.
    let e = enclave_with(b"image", &format!("custody-kms-keys = [\"{CUSTODY}\"]\nparent-decrypt = true\n")).await;
    let d = e.client.describe().await.unwrap();
    let trust = d.trust.unwrap();
    assert_eq!(trust.custody_kms_keys, vec![CUSTODY.to_owned()]);
    assert_eq!(trust.origin_pcr0, vec![e.measurement.pcr0.to_hex()]);
    assert_eq!(d.region.as_deref(), Some("eu-west-1"), "the custody key fixes the region");
    let update = CredentialsUpdate {
        access_key_id: "ASIAEXAMPLE".into(),
        secret_access_key: SecretString::new("secret"),
        session_token: None,
        region: Some("us-west-2".into()),
        expiration: None,
    };
    let info = e.client.set_credentials(update.clone()).await.unwrap();
    assert_eq!(info.region, "eu-west-1", "the parent's region does not move custody");
    let bad = CredentialsUpdate { region: Some("x.evil.example/".into()), ..update };
    assert_eq!(e.client.set_credentials(bad).await.unwrap_err().remote().unwrap().code, ErrorCode::BadRequest);
    let refused = |r: Result<nekms_rpc::Secret, nekms_rpc::ClientError>| {
        let e = r.unwrap_err();
        let remote = e.remote().expect("an error reply").clone();
        assert_eq!(remote.code, ErrorCode::Refused, "{remote:?}");
        remote.message
    };
    let ctx = |k: &str| std::collections::BTreeMap::from([(k.to_owned(), "victim".to_owned())]);
    // No credentials are installed: a refusal here was decided before KMS.
    for k in ["nekms:key-id", "NEKMS:KEY-ID", "Nekms:purpose", "nekms:anything"] {
        assert!(refused(e.client.decrypt(vec![1; 40], ctx(k), None).await).contains("rule reserved-context"), "{k}");
    }
    assert!(refused(e.client.decrypt(vec![1; 40], Default::default(), Some(CUSTODY.into())).await).contains("rule custody-key"));
    let big: std::collections::BTreeMap<String, String> = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    assert!(refused(e.client.decrypt(vec![1; 40], big, None).await).contains("rule context-size"));
    let dk = e.client.generate_data_key(CUSTODY.into(), Some("AES_256".into()), None, Default::default()).await.unwrap_err();
    assert!(dk.remote().unwrap().message.contains("rule custody-key"));
    let dk = e.client.generate_data_key("alias/any".into(), Some("AES_256".into()), None, ctx("nekms:key-id")).await.unwrap_err();
    assert!(dk.remote().unwrap().message.contains("rule reserved-context"));

    let generate = |kms: Option<&str>| nekms_rpc::GenerateKey {
        key_id: "k".into(),
        spec: nekms_keys::KeySpec::P256,
        kms_key_id: kms.map(str::to_owned),
        entropy: Default::default(),
        encryption_context: Default::default(),
        nonce: None,
        decrypt: false,
        privval: false,
        decrypt_only: false,
    };
    for other in ["alias/custody", "arn:aws:kms:eu-west-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab"] {
        let err = e.client.generate_key(generate(Some(other))).await.unwrap_err();
        assert!(err.remote().unwrap().message.contains("rule pinned-kms-key"), "{other}: {err}");
    }
    let mut reserved = generate(None);
    reserved.encryption_context = ctx("NEKMS:origin");
    assert!(e.client.generate_key(reserved).await.unwrap_err().remote().unwrap().message.contains("rule reserved-context"));
    // The pinned key itself gets as far as KMS, which is unreachable here.
    assert_eq!(e.client.generate_key(generate(None)).await.unwrap_err().remote().unwrap().code, ErrorCode::Unavailable);
    assert!(e.client.describe().await.is_ok(), "the enclave keeps serving");

    // With custody keys and nothing said, the parent paths are off; imports too.
    let default = enclave_with(b"image", &format!("custody-kms-keys = [\"{CUSTODY}\"]\n")).await;
    let err = default.client.decrypt(vec![1; 40], Default::default(), None).await.unwrap_err();
    assert!(err.remote().unwrap().message.contains("rule parent-decrypt"), "{err}");
    let import = nekms_rpc::ImportKey {
        key_id: "k".into(),
        spec: Some(nekms_keys::KeySpec::P256),
        kms_key_id: None,
        ciphertext: vec![1; 40],
        ciphertext_context: Default::default(),
        ciphertext_key_id: None,
        encryption_context: Default::default(),
        nonce: None,
        decrypt: false,
        privval: false,
    };
    let err = default.client.import_key(import).await.unwrap_err();
    assert!(err.remote().unwrap().message.contains("rule import-disabled"), "{err}");

    // Without custody keys, custody is off.
    let plain = enclave(b"image").await;
    let err = plain.client.generate_key(generate(None)).await.unwrap_err();
    assert!(err.remote().unwrap().message.contains("pins no custody"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_decryption_can_be_turned_off_in_the_configuration() {
    let e = enclave_with(b"image", "parent-decrypt = false\n").await;
    let err = e.client.decrypt(vec![1; 40], Default::default(), None).await.unwrap_err();
    assert!(err.remote().unwrap().message.contains("rule parent-decrypt"), "{err}");
    assert!(!e.client.describe().await.unwrap().trust.unwrap().parent_decrypt);
}

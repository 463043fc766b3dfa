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
    let dir = tempfile::tempdir().unwrap();
    let dev = DevDir::new(dir.path().join("dev"));
    dev.init().unwrap();
    let measurement = Measurement::of_image(image, None);
    let nsm = Arc::new(SimulatedNsm::boot(SimConfig::new(measurement.clone()), dev.document_signer().unwrap()));
    // Nothing listens on this proxy address: KMS is unreachable.
    let args = EnclaveArgs { proxy: Some(format!("unix://{}/no-proxy.sock", dir.path().display())), sim: true, ..Default::default() };
    let config = args.resolve(EnclaveArgs::default());
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
    let options = VerifyOptions::now().expect_nonce(b"nonce-1".to_vec()).expect_pcr(0, e.measurement.pcr0).expect_pcr(1, e.measurement.pcr1).expect_pcr(2, e.measurement.pcr2);
    let verified = verifier.verify(&document, &options).unwrap();
    assert_eq!(verified.document.user_data.as_deref(), Some(&b"hello"[..]));

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
    assert_eq!(code(e.client.attest(None, None, Some(vec![0; 1025])).await), ErrorCode::BadRequest);
    assert_eq!(code(e.client.generate_random(0).await), ErrorCode::BadRequest);
    assert_eq!(code(e.client.generate_random(1025).await), ErrorCode::BadRequest);
    assert_eq!(code(e.client.generate_data_key("alias/k".into(), Some("AES_512".into()), None, Default::default()).await), ErrorCode::BadRequest);
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

//! The enclave's road to KMS: EnclaveKms -> Unix socket -> nekms proxy ->
//! TCP -> the local KMS over HTTPS (its development certificate checked end
//! to end by the enclave, not the proxy).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeyPairSpec, DataKeySpec};
use nekms_devworld::DevDir;
use nekms_kms_client::{ChannelHttpClient, Credentials, EnclaveKms, EnclaveKmsError, TlsRoots};
use nekms_nsm::measure::Measurement;
use nekms_nsm::{SimConfig, SimulatedNsm};
use nekms_proxy::{Allowed, Allowlist, IpVersion, Proxy, ProxyConfig};
use nekms_transport::Address;
use zeroize::Zeroizing;

struct World {
    dir: tempfile::TempDir,
    port: u16,
    ca: String,
}

impl World {
    fn dev(&self) -> DevDir {
        DevDir::new(self.dir.path())
    }

    fn credentials(&self, name: &str) -> Credentials {
        let p = self.dev().principals().unwrap().into_iter().find(|p| p.name == name).unwrap();
        Credentials {
            access_key_id: p.access_key_id.clone(),
            secret_access_key: Zeroizing::new(p.secret_access_key.clone()),
            session_token: p.session_token.clone().map(Zeroizing::new),
            region: "us-east-1".into(),
            expiration: None,
        }
    }

    fn proxy_address(&self) -> Address {
        format!("unix://{}", self.dir.path().join("proxy.sock").display()).parse().unwrap()
    }

    async fn start_proxy(&self) -> tokio::task::JoinHandle<()> {
        let allow = Allowlist { source: "test".into(), entries: vec![Allowed { address: "127.0.0.1".into(), port: self.port }] };
        let config = ProxyConfig {
            listen: self.proxy_address(),
            remote_host: "127.0.0.1".into(),
            remote_port: self.port,
            ip_version: IpVersion::Any,
            max_connections: 64,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(300),
        };
        tokio::spawn(Proxy::bind(config, &allow).await.unwrap().run())
    }

    fn enclave(&self, image: &[u8]) -> EnclaveKms {
        let nsm = SimulatedNsm::boot(SimConfig::new(Measurement::of_image(image, None)), self.dev().document_signer().unwrap());
        let http = ChannelHttpClient::new(self.proxy_address(), TlsRoots::Pem(self.ca.clone())).unwrap();
        EnclaveKms::new(Arc::new(nsm), http, Some(format!("https://localhost:{}", self.port))).unwrap()
    }

    /// A plain SDK client for the parent's own calls, straight over TCP with the dev CA.
    fn parent(&self, name: &str) -> aws_sdk_kms::Client {
        let c = self.credentials(name);
        let http =
            ChannelHttpClient::new(format!("tcp://127.0.0.1:{}", self.port).parse().unwrap(), TlsRoots::Pem(self.ca.clone())).unwrap();
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kms::config::Credentials::new(
                c.access_key_id,
                c.secret_access_key.as_str(),
                c.session_token.map(|t| t.to_string()),
                None,
                "t",
            ))
            .endpoint_url(format!("https://localhost:{}", self.port))
            .http_client(http)
            .build();
        aws_sdk_kms::Client::from_conf(conf)
    }
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevDir::new(dir.path());
    dev.init().unwrap();
    let config = nekms_kms::run::config_from_dev(&dev, false, Duration::from_secs(300)).unwrap();
    let kms = nekms_kms::service::Kms::open(&dir.path().join("kms"), config).unwrap();
    let tls = dev.kms_tls().unwrap();
    let acceptor = nekms_kms::server::tls_acceptor(&tls.cert_pem, &tls.key_pem).unwrap();
    let bound = nekms_kms::server::bind(&[nekms_kms::server::Listen::Https("127.0.0.1:0".parse().unwrap())], Some(acceptor)).await.unwrap();
    let port = bound[0].tcp_addr().unwrap().port();
    tokio::spawn(nekms_kms::server::serve(Arc::new(nekms_kms::server::Server::new(kms, None)), bound.into_iter().next().unwrap()));
    let ca = std::fs::read_to_string(dev.tls_ca_path()).unwrap();
    World { dir, port, ca }
}

fn policy(pcr0: &str) -> String {
    serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Enclave", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/nekms-instance"},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair"], "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0}}},
        {"Sid": "Instance", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/nekms-instance"}, "Action": "kms:Encrypt", "Resource": "*"},
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/nekms-key-admin"}, "Action": "kms:*", "Resource": "*"}
    ]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_enclave_reaches_kms_through_the_proxy_and_only_it_sees_plaintext() {
    let w = world().await;
    let proxy = w.start_proxy().await;
    let image = b"the enclave image";
    let enclave = w.enclave(image);
    let pcr0 = Measurement::of_image(image, None).pcr0.to_hex();

    // Before the parent pushes credentials, there is nothing to sign with.
    assert!(matches!(enclave.generate_random(8).await, Err(EnclaveKmsError::NoCredentials)));
    enclave.set_credentials(w.credentials("instance"));
    assert!(!format!("{:?}", enclave.credentials_summary().unwrap()).contains(&*w.credentials("instance").secret_access_key));

    let key = w.parent("admin").create_key().policy(policy(&pcr0)).send().await.unwrap().key_metadata().unwrap().arn().unwrap().to_owned();
    let ct = w
        .parent("instance")
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new("Hello, KMS!"))
        .encryption_context("app", "kmstool")
        .send()
        .await
        .unwrap();
    let blob = ct.ciphertext_blob().unwrap().as_ref().to_vec();

    let context = BTreeMap::from([("app".to_owned(), "kmstool".to_owned())]);
    assert_eq!(&enclave.decrypt(&blob, &context, None).await.unwrap()[..], b"Hello, KMS!");
    assert_eq!(enclave.decrypt(&blob, &BTreeMap::new(), None).await.unwrap_err().kms_code(), Some("InvalidCiphertextException"));
    // The instance itself cannot decrypt.
    assert!(w
        .parent("instance")
        .decrypt()
        .ciphertext_blob(Blob::new(blob.clone()))
        .encryption_context("app", "kmstool")
        .send()
        .await
        .is_err());

    let dk = enclave.generate_data_key(&key, Some(DataKeySpec::Aes256), None, &BTreeMap::new()).await.unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    assert_eq!(enclave.decrypt(&dk.ciphertext_blob, &BTreeMap::new(), Some(&key)).await.unwrap(), dk.plaintext);
    let pair = enclave.generate_data_key_pair(&key, DataKeyPairSpec::EccSecgP256K1, &BTreeMap::new()).await.unwrap();
    assert_eq!(nekms_kms::crypto::public_key(nekms_kms::model::KeySpec::EccSecgP256k1, &pair.private_key).unwrap(), pair.public_key);
    assert_eq!(enclave.generate_random(48).await.unwrap().len(), 48);

    // Another image is refused by the key policy.
    let other = w.enclave(b"a rebuilt image");
    other.set_credentials(w.credentials("instance"));
    let e = other.decrypt(&blob, &context, None).await.unwrap_err();
    assert_eq!(e.kms_code(), Some("AccessDeniedException"), "{e}");

    // Wrong credentials: KMS's refusal is relayed.
    let mut wrong = w.credentials("instance");
    wrong.secret_access_key = Zeroizing::new("wrong".into());
    other.set_credentials(wrong);
    assert_eq!(other.generate_random(8).await.unwrap_err().kms_code(), Some("InvalidSignatureException"));
    let mut expired = w.credentials("instance");
    expired.expiration = Some(std::time::SystemTime::now() - Duration::from_secs(1));
    other.set_credentials(expired);
    assert!(matches!(other.generate_random(8).await, Err(EnclaveKmsError::CredentialsExpired)));

    // The proxy stops: a transport error naming it; it comes back: work resumes.
    proxy.abort();
    let _ = proxy.await;
    let _ = std::fs::remove_file(w.dir.path().join("proxy.sock"));
    let e = enclave.generate_random(8).await.unwrap_err();
    assert!(matches!(e, EnclaveKmsError::Transport(_)), "{e}");
    assert!(e.to_string().contains("proxy.sock"), "{e}");
    let _proxy = w.start_proxy().await;
    assert_eq!(enclave.generate_random(8).await.unwrap().len(), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_is_end_to_end_a_wrong_ca_is_refused() {
    let w = world().await;
    let _proxy = w.start_proxy().await;
    // Trust the web PKI only: the development certificate must not pass.
    let nsm = SimulatedNsm::boot(SimConfig::new(Measurement::of_image(b"x", None)), w.dev().document_signer().unwrap());
    let http = ChannelHttpClient::new(w.proxy_address(), TlsRoots::WebPki).unwrap();
    let enclave = EnclaveKms::new(Arc::new(nsm), http, Some(format!("https://localhost:{}", w.port))).unwrap();
    enclave.set_credentials(w.credentials("instance"));
    let e = enclave.generate_random(8).await.unwrap_err();
    assert!(matches!(e, EnclaveKmsError::Transport(_)) && e.to_string().contains("TLS"), "{e}");
}
